"""Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) for custom
resources: the CRD's additionalPrinterColumns, as kubectl get shows them on a real cluster."""

from __future__ import annotations

import datetime
import json
from typing import Any

from .resources import Resource


def wants_table(accept: str) -> bool:
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _lookup(obj: Any, json_path: str) -> Any:
    cur = obj
    for part in json_path.strip(".").split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _cell(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "date":
        try:
            t = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        return human_duration((datetime.datetime.now(tz=datetime.UTC) - t).total_seconds())
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value)
    return value


def columns(res: Resource) -> list[dict[str, Any]]:
    cols = res.printer_columns or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return cols


def table(res: Resource, objects: list[dict[str, Any]], meta: dict[str, Any], include: str) -> dict[str, Any]:
    cols = columns(res)
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}]
    definitions += [{"name": c["name"], "type": c["type"], "format": c.get("format", ""), "description": c.get("description", ""),
                     "priority": c.get("priority", 0)} for c in cols]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"]] + [_cell(c["type"], _lookup(obj, c["jsonPath"])) for c in cols]}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": definitions, "rows": rows}
