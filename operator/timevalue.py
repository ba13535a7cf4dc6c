"""Elasticsearch time values (``30s``, ``500ms``, ``1m``) as seconds."""

from __future__ import annotations

import re

from .errors import BadRequest

_UNITS = {"nanos": 1e-9, "micros": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RE = re.compile(r"^(\d+(?:\.\d+)?)(nanos|micros|ms|s|m|h|d)$")
MAX_SECONDS = 24 * 3600.0


def parse_time(value: str | None, default: float, name: str = "timeout") -> float:
    if value is None or value == "":
        return default
    if value == "-1":
        return MAX_SECONDS
    m = _RE.match(value.strip().lower())
    if not m:
        raise BadRequest(
            f"failed to parse setting [{name}] with value [{value}] as a time value: "
            "unit is missing or unrecognized (use e.g. 30s, 500ms, 2m)"
        )
    return min(float(m.group(1)) * _UNITS[m.group(2)], MAX_SECONDS)
