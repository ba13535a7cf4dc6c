"""Elasticsearch ids to Kubernetes names and back.

Elasticsearch ids may carry underscores, upper case or a leading dot (``.elser_model_2``);
Kubernetes names are DNS-1123 labels. A valid id is used as it is; any other id becomes a
readable name plus a short hash of the original, so two ids never map to the same name. The
original id is always kept (``spec.inference_id``, or an annotation), so the mapping back is exact.
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_LABEL = 63


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_LABEL and bool(DNS_LABEL.match(name))


def k8s_name(es_id: str, *, reserve: int = 0) -> str:
    """A DNS-1123 label for an Elasticsearch id; ``reserve`` keeps room for suffixes like ``-abc12``."""
    limit = MAX_LABEL - reserve
    if is_valid_name(es_id) and len(es_id) <= limit:
        return es_id
    digest = hashlib.sha256(es_id.encode()).hexdigest()[:6]
    base = re.sub(r"[^a-z0-9-]+", "-", es_id.lower()).strip("-")
    base = re.sub(r"-{2,}", "-", base)[: limit - len(digest) - 1].strip("-") or "id"
    return f"{base}-{digest}"


def label_value(es_id: str) -> str:
    """A label value for an id (labels allow ``._-`` and 63 characters, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", es_id).strip("._-")
    if len(value) > MAX_LABEL or value != es_id.strip("."):
        value = k8s_name(es_id)
    return value or "none"
