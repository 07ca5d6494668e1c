"""Small helpers shared by the tetrajet training benchmarks: a per-run JSON cache (resumable runs),
CSV writing and mean/std summaries. No training logic here."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def config_key(config: dict[str, Any]) -> str:
    """Short stable hash of a JSON-serialisable run configuration (cache invalidation key)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


class RunCache:
    """One JSON file per finished run under ``folder``: ``<name>.json`` holding {"key", "result"}.
    A run whose configuration hash changed is recomputed."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not name or any(c in name for c in "/\\"):
            raise ValueError(f"run name must be a non-empty file name, got {name!r}")
        return self.folder / f"{name}.json"

    def get(self, name: str, key: str) -> dict[str, Any] | None:
        p = self._path(name)
        if not p.exists():
            return None
        try:
            blob = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None
        return blob["result"] if blob.get("key") == key else None

    def put(self, name: str, key: str, result: dict[str, Any]) -> None:
        p = self._path(name)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "result": result}))
        tmp.replace(p)  # atomic: an interrupted run never leaves a half-written result


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN for no values."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def write_csv(path: Path, rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> None:
    """Write ``rows`` (dicts) with columns ``fields``; floats with 6 significant digits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in fields})
