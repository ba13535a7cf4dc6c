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


LABEL_VALUE = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")


def label_value(es_id: str) -> str:
    """A label value for an id, injective (two ids never share one, so never a selector).

    An id that is a valid label value in lower case (``my-e5``) is its own label value; any other
    (a leading dot, upper case, too long) becomes a readable part, ``.X`` and a hash of the id.
    Plain values have no upper case and encoded ones always have the ``X``, so the two kinds never
    meet: ``.e5`` and ``e5`` (and ``e5.X<hash of .e5>``) select different pods."""
    if len(es_id) <= MAX_LABEL and LABEL_VALUE.match(es_id):
        return es_id
    digest = hashlib.sha256(es_id.encode()).hexdigest()[:12]
    base = re.sub(r"[^a-z0-9._-]+", "-", es_id.lower()).strip("._-")
    base = base[: MAX_LABEL - len(digest) - 2].rstrip("._-")
    return f"{base}.X{digest}" if base else f"X{digest}"
