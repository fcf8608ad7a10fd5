"""Machine-readable benchmark output: one JSON object per line, appended to ``--jsonl PATH``.

Every benchmark script writes, besides its human-readable lines, one record per
measurement: ``{"bench": <script>, "kind": <what>, ...numbers}``, and first one
``{"kind": "env"}`` record naming the machine (nfstudy.gpu_check.environment: GPU, driver,
torch, CUDA, cuDNN, Python, commit). tools/bench_tables.py turns the records of several
scripts into the tables of benchmarks/README.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """JSON has no NaN or infinity: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class JsonLines:
    """``write(kind, **fields)`` appends one record to ``path`` (nothing when ``path`` is None)."""

    def __init__(self, path: str | os.PathLike | None, bench: str, device: str = "cpu"):
        self.path = Path(path) if path else None
        self.bench = bench
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from nfstudy.gpu_check import environment

        env = environment(str(device))
        env["cpu"] = platform.processor() or platform.machine()
        env["cpu_count"] = os.cpu_count()
        env["torch_threads"] = __import__("torch").get_num_threads()
        self.write("env", **env, argv=sys.argv[1:], date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def write(self, kind: str, **fields: Any) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_plain({"bench": self.bench, "kind": kind, **fields}), default=str) + "\n")
