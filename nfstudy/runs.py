"""Run folders, ``run.json`` metadata, atomic writes, and loading results back.

Layout (a contract, see README.md)::

    results/<figure>/<profile>/seed=<S>/
        <figure>.ipynb   run.json   *.csv (tidy)   claims.csv   <figure>.png
    results/<figure>/<profile>/<figure>.png   results/<figure>/<profile>/claims.csv

Every file is written to a temporary name in the same folder and renamed into place,
so a crash never leaves a half-written CSV. ``run.json`` says ``"status": "running"``
until :meth:`Run.finish`; a run that failed or was interrupted says so, and loaders
skip every run that did not complete, with a warning that names it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .runtime import resolve_device

__all__ = [
    "Run",
    "atomic_write",
    "atomic_write_csv",
    "atomic_write_json",
    "load_table",
    "load_tables",
    "mark_run",
    "read_run",
    "results_root",
    "run_dir",
    "seed_dirs",
]

_UMASK = os.umask(0)
os.umask(_UMASK)
STATUSES = ("running", "completed", "failed", "interrupted")
_VERSIONED = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "seaborn", "scikit-learn", "papermill")


def project_root() -> Path | None:
    """The repository checkout that holds this package (None when installed elsewhere)."""
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "pyproject.toml").is_file() else None


def results_root() -> Path:
    """``$NFSTUDY_RESULTS``, else ``results/`` in the repository (else in the cwd)."""
    if os.environ.get("NFSTUDY_RESULTS"):
        return Path(os.environ["NFSTUDY_RESULTS"]).expanduser()
    return (project_root() or Path.cwd()) / "results"


def run_dir(figure: str, profile: str, seed: int, root: str | os.PathLike | None = None) -> Path:
    return Path(root or results_root()) / figure / profile / f"seed={seed}"


# --------------------------------------------------------------------------- atomic writes


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    return atomic_write(path, buffer.getvalue())


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(path, buffer.getvalue())


# --------------------------------------------------------------------------- run metadata


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _git() -> dict[str, Any]:
    root = project_root()
    if root is None:
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _versions() -> dict[str, str | None]:
    from . import __version__

    found = {"python": platform.python_version(), "nfstudy": __version__}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _device_name(device: Any) -> str | None:
    if device is None:
        return None
    name = str(device)
    if name.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{name} ({torch.cuda.get_device_name(torch.device(name))})"
    return f"{name} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)" if name == "cpu" else name


def read_run(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run.json`` of a seed folder, or None if it is missing or unreadable."""
    path = Path(folder) / "run.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def mark_run(folder: str | os.PathLike, status: str, error: str | None = None) -> None:
    """Set the status of the run in ``folder`` (used when a run dies outside Python)."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
    meta = read_run(folder)
    if meta is None:
        return
    meta.update(status=status, finished=_now())
    if error:
        meta["error"] = error
    if meta.get("started_unix") is not None:
        meta["duration_s"] = round(_dt.datetime.now().timestamp() - meta["started_unix"], 3)
    atomic_write_json(meta, Path(folder) / "run.json")


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def _earlier_attempts(path: Path) -> list[dict[str, Any]]:
    """The attempts recorded in an unfinished ``run.json`` (interrupted, failed, or still
    marked running after a kill), so that a resumed run keeps what came before it; nothing
    after a completed run, which a new run replaces."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or old.get("status") == "completed":
        return []
    attempt = {k: old.get(k) for k in ("started", "finished", "status", "error", "duration_s", "pid")}
    return [*old.get("earlier_attempts", []), attempt]


class Run:
    """One (figure, profile, seed) run: its folder, ``run.json`` and atomic writers.

    ``Run.start(...)`` writes ``run.json`` with ``status: running``; :meth:`finish` marks
    it ``completed``. As a context manager, an exception marks it ``failed`` (or
    ``interrupted`` on Ctrl-C) and propagates.
    """

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.dir = Path(folder)
        self.meta = meta

    @classmethod
    def start(
        cls,
        figure: str,
        profile: str,
        seed: int,
        params: Mapping[str, Any] | None = None,
        *,
        dataset: str | None = None,
        device: Any = None,
        root: str | os.PathLike | None = None,
        folder: str | os.PathLike | None = None,
    ) -> "Run":
        folder = Path(folder) if folder else run_dir(figure, profile, seed, root)
        folder.mkdir(parents=True, exist_ok=True)
        earlier = _earlier_attempts(folder / "run.json")
        now = _dt.datetime.now()
        meta = {
            "figure": figure,
            "profile": profile,
            "seed": seed,
            "status": "running",
            "dataset": dataset,
            "device": _device_name(None if device is None else resolve_device(device)),
            "params": dict(params or {}),
            "started": _now(),
            "started_unix": now.timestamp(),
            "finished": None,
            "duration_s": None,
            "torch_threads": _torch_threads(),  # CPU results depend on it (summation order)
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": os.environ.get("NFSTUDY_COMMAND") or " ".join(sys.argv),
            "git": _git(),
            "versions": _versions(),
        }
        if earlier:  # an interrupted or failed run of the same folder, resumed from its checkpoints
            meta["earlier_attempts"] = earlier
        run = cls(folder, meta)
        run._write_meta()
        return run

    def _write_meta(self) -> None:
        atomic_write_json(self.meta, self.dir / "run.json")

    @property
    def figure(self) -> str:
        return self.meta["figure"]

    @property
    def seed(self) -> int:
        return self.meta["seed"]

    def save_table(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        """Write ``<name>.csv`` (tidy, with a leading ``seed`` column); returns what was written."""
        if "seed" not in df.columns:
            df = df.copy()
            df.insert(0, "seed", self.seed)
        atomic_write_csv(df, self.dir / f"{name}.csv")
        return df

    def save_tables(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Write every table; returns them as written (with the ``seed`` column)."""
        return {name: self.save_table(name, df) for name, df in tables.items()}

    def save_claims(self, claims: pd.DataFrame) -> pd.DataFrame:
        return self.save_table("claims", claims)

    def save_figure(self, fig, name: str | None = None) -> Path:
        return atomic_save_figure(fig, self.dir / f"{name or self.figure}.png")

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
        self.meta.update(
            status=status,
            finished=_now(),
            duration_s=round(_dt.datetime.now().timestamp() - self.meta["started_unix"], 3),
        )
        if error:
            self.meta["error"] = error
        self._write_meta()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.meta["status"] == "running":
                self.finish()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted", "KeyboardInterrupt")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}")


# --------------------------------------------------------------------------- loading back


def seed_dirs(
    figure: str, profile: str, root: str | os.PathLike | None = None, completed_only: bool = True
) -> list[Path]:
    """Seed folders of a figure and profile, in seed order; with ``completed_only``,
    folders whose run did not complete are skipped with a warning naming them."""
    base = Path(root or results_root()) / figure / profile
    folders = [p for p in base.glob("seed=*") if p.is_dir()]

    def seed_of(p: Path):
        try:
            return (0, int(p.name.split("=", 1)[1]))
        except ValueError:
            return (1, p.name)

    kept = []
    for folder in sorted(folders, key=seed_of):
        meta = read_run(folder)
        status = meta.get("status") if meta else "missing run.json"
        if completed_only and status != "completed":
            warnings.warn(f"skipping {folder}: run status is {status!r}, not 'completed'", stacklevel=2)
            continue
        kept.append(folder)
    return kept


def load_table(
    figure: str,
    table: str,
    profile: str = "paper",
    root: str | os.PathLike | None = None,
    seeds: Iterable[int] | None = None,
) -> pd.DataFrame:
    """One table of a figure over every completed seed, as a single DataFrame.

    >>> df = load_table("fig2", "gradient_summary", profile="quick")   # doctest: +SKIP
    """
    wanted = None if seeds is None else {int(s) for s in seeds}
    frames = []
    for folder in seed_dirs(figure, profile, root):
        path = folder / f"{table}.csv"
        if wanted is not None and int(folder.name.split("=", 1)[1]) not in wanted:
            continue
        if not path.is_file():
            available = sorted(p.stem for p in folder.glob("*.csv"))
            raise FileNotFoundError(f"{path} does not exist; tables of this run: {', '.join(available)}")
        frames.append(pd.read_csv(path))
    if not frames:
        where = Path(root or results_root()) / figure / profile
        raise FileNotFoundError(
            f"no completed runs of {figure} ({profile}) under {where}: run `make {figure} PROFILE={profile}` first"
        )
    return pd.concat(frames, ignore_index=True)


def load_tables(
    figure: str, profile: str = "paper", root: str | os.PathLike | None = None, exclude: Iterable[str] = ("claims",)
) -> dict[str, pd.DataFrame]:
    """Every table of a figure over all completed seeds: ``{table name: DataFrame}``."""
    folders = seed_dirs(figure, profile, root)
    if not folders:
        where = Path(root or results_root()) / figure / profile
        raise FileNotFoundError(
            f"no completed runs of {figure} ({profile}) under {where}: run `make {figure} PROFILE={profile}` first"
        )
    names = sorted({p.stem for folder in folders for p in folder.glob("*.csv")} - set(exclude))
    return {name: load_table(figure, name, profile, root) for name in names}
