"""Run folders, ``run.json`` metadata, atomic writes, and loading results back.

Layout (a contract, see README.md)::

    results/<figure>/<config>/seed=<S>/
        <figure>.ipynb   run.json   *.csv (tidy)   claims.csv   <figure>.png
    results/<figure>/<config>/<figure>.png   results/<figure>/<config>/claims.csv

``<config>`` names the run's configuration (:mod:`nfstudy.identity`): the profile
(``quick``) for the profile's own parameters, ``<profile>+<what differs>-<hash>``
(``quick+layer=44-1911ee``) for any other. The loaders read a folder's figure, profile,
configuration and seed from its ``run.json`` and never count one whose place says
otherwise (a copy ``seed=0.bak``, ``seed=1`` holding seed 0's run, a quick run under
``paper/``, a run of another configuration): it is skipped with a warning naming it and
where it belongs (:func:`identity_problem`). They read one configuration at a time, the
profile's own unless asked for another (:func:`configurations` lists those present).

A table whose CSV is larger than :data:`COMPRESS_ABOVE` is stored gzip-compressed as
``<name>.csv.gz`` (deterministic: no time stamp, no file name in the header), so that
the committed gallery can hold every table; pandas reads it as it is
(``pd.read_csv("gradient_values.csv.gz")``), and every loader here takes either form.

Every file is written to a temporary name in the same folder and renamed into place,
so a crash never leaves a half-written CSV. What survives what:

* A run writes into a staging folder, ``seed=<S>.attempt/``, beside the seed's folder,
  and is swapped in whole (one atomic rename exchange on Linux) when it completes: a
  run that fails, is interrupted or killed never touches the last completed result of
  its seed, and its attempt folder (run.json, executed notebook, checkpoints) stays for
  inspection; the next run of the seed resumes from it.
* ``run.json`` records each table's file name, row count and SHA-256 of the file as
  stored (``tables``); the loaders refuse a table that does not match, naming it and the
  fix. Claims re-derived later from the stored tables (:func:`rewrite_table`, by
  ``python -m nfstudy claims``) are recorded the same way, with a note of when and by
  which commit (``rederived``).
* A per-seed lock (``.seed=<S>.lock``: pid, host, start time, held with ``flock``):
  a second run of a running seed stops with the other's pid; the lock of a killed run
  is released by the kernel and reported as stale, and its attempt recorded ``killed``.

``run.json`` says ``"status": "running"`` until :meth:`Run.finish`; loaders read only
completed seed folders and warn about every unfinished attempt, naming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import gzip
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
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

from . import identity
from .runtime import resolve_device

try:
    import fcntl
except ImportError:  # Windows: no per-seed lock
    fcntl = None

__all__ = [
    "ATTEMPT_SUFFIX",
    "COMPRESS_ABOVE",
    "CorruptResultError",
    "Run",
    "SeedBusyError",
    "acquire_lock",
    "atomic_write",
    "atomic_write_csv",
    "atomic_write_json",
    "config_folder",
    "config_name",
    "configurations",
    "identity_problem",
    "load_table",
    "load_tables",
    "mark_run",
    "missing_tables",
    "prepare_attempt",
    "publish",
    "read_run",
    "read_table",
    "read_tables",
    "rewrite_table",
    "run_problem",
    "results_root",
    "run_dir",
    "seed_dirs",
    "state_configuration",
    "table_files",
    "verify_tables",
]

_UMASK = os.umask(0)
os.umask(_UMASK)
STATUSES = ("running", "completed", "failed", "interrupted", "killed")
ATTEMPT_SUFFIX = ".attempt"  # seed=<S>.attempt/: the run in progress, or the last one that did not complete
# A table whose CSV is larger than this (bytes) is stored as ``<name>.csv.gz``: fig2's
# gradient values (~1.5 MB of CSV a seed, ~0.6 MB compressed) and the like, so that the
# committed gallery holds every table. Smaller tables stay plain CSV, which git diffs.
COMPRESS_ABOVE = 1_000_000
TABLE_SUFFIXES = (".csv", ".csv.gz")  # a table's file: <name>.csv or <name>.csv.gz
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


def run_dir(figure: str, profile: str, seed: int, root: str | os.PathLike | None = None, config: str | None = None) -> Path:
    """The folder of one seed: ``<root>/<figure>/<config>/seed=<S>``, ``config`` the name of
    the run's configuration (:mod:`nfstudy.identity`; the profile's own by default)."""
    return Path(root or results_root()) / figure / (config or profile) / f"seed={seed}"


def config_name(figure: str, profile: str | None = None, config: Any = None) -> str:
    """The folder name of a configuration: ``config`` None (the profile's own), a name
    (``"quick+layer=44-1911ee"``, as :func:`configurations` lists them), a
    :class:`~nfstudy.identity.Configuration`, or overrides of the profile's parameters
    (``{"layer": 44}``). ``profile`` defaults to a name's own, else ``paper``."""
    if config is None:
        return profile or "paper"
    if isinstance(config, identity.Configuration):
        name = config.name
    elif isinstance(config, str):
        name = config
    elif isinstance(config, Mapping):
        name = identity.configuration_for(figure, profile or "paper", config).name
    else:
        raise TypeError(f"config must be a configuration's name or a dict of parameters, got {config!r}")
    own = identity.profile_of(name)
    if profile is not None and own != profile:
        raise ValueError(f"configuration {name} is one of the {own} profile, not {profile}: give profile={own!r}")
    return name


def config_folder(figure: str, profile: str | None = None, config: Any = None, root: str | os.PathLike | None = None) -> Path:
    """The folder of a configuration's seeds (see :func:`config_name` for ``config``)."""
    return Path(root or results_root()) / figure / config_name(figure, profile, config)


def configurations(figure: str, profile: str | None = None, root: str | os.PathLike | None = None) -> list[str]:
    """The configurations of ``figure`` with a seed folder under ``root`` (of ``profile``
    only, if given): each profile's own first (paper, quick, others), then its variants."""
    base = Path(root or results_root()) / figure
    names = [
        p.name for p in (base.iterdir() if base.is_dir() else []) if p.is_dir() and not p.name.startswith(".") and any(p.glob("seed=*"))
    ]
    if profile is not None:
        names = [n for n in names if identity.profile_of(n) == profile]
    order = {"paper": 0, "quick": 1}
    return sorted(names, key=lambda n: (order.get(identity.profile_of(n), 2), identity.profile_of(n), n != identity.profile_of(n), n))


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


def state_configuration(fig, config: identity.Configuration | None) -> None:
    """Add to ``fig``'s title the line that says what differs from the profile's own
    parameters (model, depth, data set, any other), for a configuration that is not it;
    the profile's own keeps its title as it is."""
    if config is None or config.default:
        return
    line = f"configuration {config.name}: {config.describe()}"
    title = fig.get_suptitle()
    if line in title:  # stated already (a figure saved twice)
        return
    size = fig._suptitle.get_fontsize() if getattr(fig, "_suptitle", None) is not None else 10
    fig.suptitle(f"{title}\n{line}" if title else line, fontsize=size)


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


class CorruptResultError(ValueError):
    """A result file does not match what its run recorded (or cannot be read); the
    message names the file and the fix."""


class SeedBusyError(RuntimeError):
    """Another live process is running this seed; the message names it."""


def _read_json_object(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(the object, None)``, or ``(None, why it cannot be used)``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, f"no {path.name}"
    except OSError as error:
        return None, f"{path.name} cannot be read ({error.strerror or error})"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, f"{path.name} is not valid JSON (truncated, or binary garbage)"
    if not isinstance(obj, dict):
        return None, f"{path.name} holds a JSON {type(obj).__name__}, not an object"
    return obj, None


def read_run(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run.json`` of a seed folder, or None if it is missing or unusable (not
    readable, not JSON, not an object: :func:`run_problem` says which)."""
    return _read_json_object(Path(folder) / "run.json")[0]


def run_problem(folder: str | os.PathLike) -> str | None:
    """Why the ``run.json`` of ``folder`` cannot be used, or None when it can."""
    return _read_json_object(Path(folder) / "run.json")[1]


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
    if isinstance(meta.get("started_unix"), (int, float)):
        meta["duration_s"] = round(_dt.datetime.now().timestamp() - meta["started_unix"], 3)
    atomic_write_json(meta, Path(folder) / "run.json")


# --------------------------------------------------------------------------- the seed lock


def lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot; Linux), so that a
    recycled pid is not mistaken for the run that held a lock."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_alive(info: Mapping[str, Any] | None) -> bool:
    """Whether the process recorded in a lock (``pid``, ``host``, ``process_start``) still runs."""
    if not info or not isinstance(info.get("pid"), int):
        return False
    if info.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: cannot tell, assume it runs
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    start = _process_start(info["pid"])
    return start is None or info.get("process_start") in (None, start)


def _lock_holder(path: Path) -> dict[str, Any] | None:
    return _read_json_object(path)[0]


def _describe_holder(info: Mapping[str, Any] | None) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (started {info.get('started')})"


class SeedLock:
    """The per-seed lock of a run folder (see the module docstring); release it with
    :meth:`release` or use it as a context manager. ``stale`` is what a killed run had
    left in the lock file (None when the lock was free and clean)."""

    def __init__(self, path: Path, fd: int | None, stale: dict[str, Any] | None):
        self.path, self.fd, self.stale = path, fd, stale

    def release(self) -> None:
        if self.fd is None:
            return
        _HELD.pop(str(self.path), None)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def __enter__(self) -> SeedLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[str, SeedLock] = {}


def acquire_lock(final: str | os.PathLike, *, what: str = "this seed") -> SeedLock:
    """Lock the seed folder ``final`` for this process, or raise :class:`SeedBusyError`
    naming the live process that holds it. A lock left by a killed run is cleared (and
    returned in ``stale``); taking a lock this process already holds takes it over (a
    notebook's cells run again in the same kernel)."""
    final = Path(final)
    path = lock_path(final)
    if str(path) in _HELD:
        _HELD[str(path)].release()
    final.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "process_start": _process_start(os.getpid())}
    if fcntl is None:
        return SeedLock(path, None, None)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _lock_holder(path)
            raise SeedBusyError(
                f"{what} is already being run by {_describe_holder(holder)} (lock {path}): wait for it to end, "
                f"or stop it{' (kill ' + str(holder['pid']) + ')' if holder and holder.get('pid') else ''} and run again"
            ) from None
        except OSError:
            os.close(fd)  # a filesystem without flock: no lock rather than no run
            return SeedLock(path, None, None)
        try:  # the file may have been unlinked by its previous holder between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = _lock_holder(path)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    lock = SeedLock(path, fd, stale if stale and stale.get("pid") != os.getpid() else None)
    _HELD[str(path)] = lock
    return lock


# --------------------------------------------------------------------------- attempts


def attempt_dir(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.with_name(final.name + ATTEMPT_SUFFIX)


def is_attempt(folder: str | os.PathLike) -> bool:
    return Path(folder).name.endswith(ATTEMPT_SUFFIX)


def _final_of(attempt: Path) -> Path:
    return attempt.with_name(attempt.name[: -len(ATTEMPT_SUFFIX)])


def attempt_status(attempt: Path) -> str:
    """The status of an attempt folder; ``killed`` for one still marked running whose
    process holds no lock."""
    meta = read_run(attempt)
    if meta is None:
        return run_problem(attempt) or "unreadable"
    status = str(meta.get("status"))
    if status == "running" and not holder_alive(_lock_holder(lock_path(_final_of(attempt)))):
        return "killed"
    return status


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of ``source`` into ``target`` (copy where links do not work).
    Checkpoints are replaced by rename, never rewritten in place, so a link is never changed
    through the other name."""
    if not source.is_dir():
        return
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def prepare_attempt(final: str | os.PathLike) -> Path:
    """The staging folder of the next run of the seed folder ``final`` (hold its lock):

    * an unfinished attempt is reused, so the run resumes from its checkpoints; one still
      marked ``running`` is marked ``killed`` (its process holds no lock);
    * otherwise a new one, with the completed run's checkpoints linked in (a re-run with
      the same parameters trains nothing again; with others, the checkpoints say so).

    Leftovers of a swap that was itself cut short are cleaned up first.
    """
    final = Path(final)
    attempt = attempt_dir(final)
    replaced = final.with_name(f".{final.name}.replaced")
    meta = read_run(attempt)
    if attempt.is_dir() and meta is not None and meta.get("status") == "completed":
        if final.exists():
            shutil.rmtree(attempt)  # the previous run, after an exchange cut short before its removal
        else:
            os.rename(attempt, final)  # a completed run whose swap was cut short: finish it
    if replaced.exists():
        shutil.rmtree(replaced)
    if attempt.is_dir():
        if meta is not None and meta.get("status") == "running":
            mark_run(
                attempt,
                "interrupted" if meta.get("pid") == os.getpid() else "killed",
                "the process ended without recording why (killed: SIGKILL, out of memory, power loss?)",
            )
        return attempt
    attempt.mkdir(parents=True)
    _link_tree(final / "checkpoints", attempt / "checkpoints")
    return attempt


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish(attempt: str | os.PathLike, final: str | os.PathLike | None = None) -> Path:
    """Swap a completed attempt in as the seed's result (hold the seed's lock); its tables
    are verified first. The previous result is replaced in one step, so a reader sees the
    old run or the new one, whole."""
    attempt = Path(attempt)
    final = Path(final) if final is not None else _final_of(attempt)
    verify_tables(attempt)
    if not final.exists():
        os.rename(attempt, final)
    elif _exchange(attempt, final):
        shutil.rmtree(attempt)  # now the previous run
    else:
        replaced = final.with_name(f".{final.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
        os.rename(attempt, final)
        shutil.rmtree(replaced)
    return final


# --------------------------------------------------------------------------- verification


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rerun_hint(meta: Mapping[str, Any] | None) -> str:
    if not meta or not meta.get("figure"):
        return "re-run this seed"
    options = f"--profile {meta.get('profile')} --seed {meta.get('seed')}{_config_options(meta)}"
    return f"re-run the seed (python -m nfstudy run {meta['figure']} {options})"


def _config_options(meta: Mapping[str, Any]) -> str:
    """The ``-p NAME VALUE`` options that give a recorded run's configuration again."""
    params = meta.get("params")
    if not isinstance(params, dict) or not isinstance(meta.get("profile"), str):
        return ""
    options = []
    for name, (value, _) in identity.configuration(meta["figure"], meta["profile"], params).differs.items():
        if isinstance(value, list) and all(isinstance(v, str) and "," not in v for v in value):
            text = ",".join(value)
        elif isinstance(value, (list, dict)):
            text = json.dumps(value)
        else:
            text = value if isinstance(value, str) else repr(value)
        options.append(f" -p {name} {shlex.quote(text)}")
    return "".join(options)


_NEWLINE = b"\n"


def table_name(path: str | os.PathLike) -> str | None:
    """The table a file holds (``gradient_values`` of ``gradient_values.csv.gz``), or None
    for a file that is no table."""
    name = Path(path).name
    for suffix in sorted(TABLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def encode_table(df: pd.DataFrame) -> tuple[str, bytes]:
    """``(suffix, bytes)`` of a table as stored: tidy CSV, gzip-compressed (no time stamp, no
    file name: the same table gives the same bytes) when larger than :data:`COMPRESS_ABOVE`."""
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    data = buffer.getvalue().encode()
    if len(data) > COMPRESS_ABOVE:
        return ".csv.gz", gzip.compress(data, compresslevel=9, mtime=0)
    return ".csv", data


def _decoded(path: Path, data: bytes) -> bytes:
    """The CSV text of a stored table (decompressed if it is a ``.csv.gz``); raises
    :class:`CorruptResultError` when a compressed file cannot be decompressed."""
    if not path.name.endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, ValueError) as error:
        raise CorruptResultError(f"{path} is not a readable gzip file ({error})") from None


def table_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Every table stored in a run folder, ``{name: path}``. Where both forms of one table
    lie there (a stray copy), the one ``run.json`` records wins, else the plain CSV."""
    folder = Path(folder)
    recorded = (read_run(folder) or {}).get("tables")
    recorded = recorded if isinstance(recorded, dict) else {}
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []:
        name = table_name(path)
        if name is None or path.name.startswith("."):
            continue
        if name not in found or (path.name in recorded and found[name].name not in recorded):
            found[name] = path
    return found


def _recorded_file(recorded: Mapping[str, Any], name: str) -> str | None:
    """The file name ``run.json`` records for table ``name`` (either form), or None."""
    for suffix in TABLE_SUFFIXES:
        if f"{name}{suffix}" in recorded:
            return f"{name}{suffix}"
    return None


def verify_tables(folder: str | os.PathLike, names: Iterable[str] | None = None) -> None:
    """Check the tables of a run folder against the row counts and SHA-256 in its
    ``run.json`` (all recorded tables, or those ``names``, without ``.csv``); raise
    :class:`CorruptResultError` naming the first that does not match and the fix. A run
    written before tables were recorded is not checked."""
    folder = Path(folder)
    meta, problem = _read_json_object(folder / "run.json")
    if meta is None:
        raise CorruptResultError(f"{folder / 'run.json'}: {problem}; {_rerun_hint(None)} or delete {folder}")
    recorded = meta.get("tables")
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise CorruptResultError(f"{folder / 'run.json'}: its 'tables' entry is damaged; {_rerun_hint(meta)}")
    if names is None:
        wanted = list(recorded)
    else:
        stored = table_files(folder)
        wanted = [_recorded_file(recorded, n) or (stored[n].name if n in stored else f"{n}.csv") for n in names]
    for file in wanted:
        path = folder / file
        entry = recorded.get(file)
        if not isinstance(entry, dict):
            raise CorruptResultError(
                f"{path} was not written by the run recorded in {folder / 'run.json'}; delete it or {_rerun_hint(meta)}"
            )
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptResultError(f"{path} is missing (its run.json lists it); restore it or {_rerun_hint(meta)}") from None
        if _sha256(data) != entry.get("sha256"):
            try:
                rows = f"{max(_decoded(path, data).count(_NEWLINE) - 1, 0)} found"
            except CorruptResultError:
                rows = "not readable as gzip"
            raise CorruptResultError(
                f"{path} does not match its run.json ({entry.get('rows')} rows recorded, {rows}; checksum differs): "
                f"it was truncated or changed after the run. Restore it or {_rerun_hint(meta)}"
            )


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def _earlier_attempts(path: Path) -> list[dict[str, Any]]:
    """The attempts recorded in an unfinished ``run.json`` (interrupted, failed, or
    killed), so that a resumed run keeps what came before it; nothing after a completed run."""
    old, _ = _read_json_object(path)
    if old is None or old.get("status") == "completed":
        return []
    attempt = {k: old.get(k) for k in ("started", "finished", "status", "error", "duration_s", "pid")}
    earlier = old.get("earlier_attempts")
    return [*(earlier if isinstance(earlier, list) else []), attempt]


def _with_seed(df: pd.DataFrame, seed: Any) -> pd.DataFrame:
    """The table with a leading ``seed`` column (unless it has one)."""
    if "seed" in df.columns:
        return df
    df = df.copy()
    df.insert(0, "seed", seed)
    return df


def _store_table(folder: Path, meta: dict[str, Any], name: str, df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Write table ``name`` into ``folder`` (atomically, in its stored form) and record it in
    ``meta["tables"]`` (not yet written to run.json); the other form of the same table, if
    any (a table that grew past or shrank below :data:`COMPRESS_ABOVE`), is removed."""
    df = _with_seed(df, seed)
    suffix, data = encode_table(df)
    atomic_write(folder / f"{name}{suffix}", data)
    tables = meta.setdefault("tables", {})
    for other in TABLE_SUFFIXES:
        if other != suffix:
            tables.pop(f"{name}{other}", None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / f"{name}{other}")
    tables[f"{name}{suffix}"] = {"rows": len(df), "sha256": _sha256(data)}
    return df


class Run:
    """One (figure, configuration, seed) run: its folder, ``run.json`` and atomic writers.

    ``Run.start(...)`` works out the configuration of ``params`` (:mod:`nfstudy.identity`),
    takes the lock of the seed's folder in that configuration's folder, writes ``run.json``
    (``params`` and ``config`` among the rest) with ``status: running``
    in the seed's attempt folder (:attr:`dir`); :meth:`finish` marks it ``completed`` and
    swaps it in as the seed's folder (then :attr:`dir` is that folder). Given an attempt
    folder (``folder=".../seed=0.attempt"``, as ``python -m nfstudy run`` does), the caller
    holds the lock and swaps it in; a folder of the results layout must be the one of these
    parameters' configuration and seed (else a ValueError naming the right one). As a context manager, an exception marks the run
    ``failed`` (or ``interrupted`` on Ctrl-C) and propagates.
    """

    def __init__(self, folder: Path, meta: dict[str, Any], final: Path | None = None, lock: SeedLock | None = None):
        self.dir = Path(folder)
        self.meta = meta
        self.final = final
        self._lock = lock

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
    ) -> Run:
        config = identity.configuration(figure, profile, params)
        target = Path(folder) if folder else run_dir(figure, profile, seed, root, config=config.name)
        if folder:
            _check_place(target, config, seed)
        if is_attempt(target):  # the caller holds the lock and publishes
            final, lock, attempt = None, None, target
            attempt.mkdir(parents=True, exist_ok=True)
        else:
            final, lock = target, acquire_lock(target, what=f"{figure} seed {seed} ({config.name})")
            try:
                attempt = prepare_attempt(target)
            except BaseException:
                lock.release()
                raise
        earlier = _earlier_attempts(attempt / "run.json")
        now = _dt.datetime.now()
        meta = {
            "figure": figure,
            "profile": profile,
            "seed": seed,
            "status": "running",
            "dataset": dataset,
            "device": _device_name(None if device is None else resolve_device(device)),
            "params": dict(params or {}),
            "config": config.record(),  # name, hash, what differs from the profile (nfstudy.identity)
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
            "tables": {},  # file -> {"rows", "sha256"}: what the loaders check
        }
        if earlier:  # an interrupted, failed or killed run of the same seed, resumed from its checkpoints
            meta["earlier_attempts"] = earlier
        run = cls(attempt, meta, final, lock)
        try:
            run._write_meta()
        except BaseException:
            run._release()
            raise
        return run

    def _write_meta(self) -> None:
        atomic_write_json(self.meta, self.dir / "run.json")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def figure(self) -> str:
        return self.meta["figure"]

    @property
    def seed(self) -> int:
        return self.meta["seed"]

    def save_table(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        """Write ``<name>.csv`` (tidy, with a leading ``seed`` column; ``<name>.csv.gz`` when
        larger than :data:`COMPRESS_ABOVE`) and record its file, rows and checksum in
        ``run.json``; returns what was written."""
        df = _store_table(self.dir, self.meta, name, df, self.seed)
        self._write_meta()
        return df

    def save_tables(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Write every table; returns them as written (with the ``seed`` column)."""
        return {name: self.save_table(name, df) for name, df in tables.items()}

    def save_claims(self, claims: pd.DataFrame) -> pd.DataFrame:
        return self.save_table("claims", claims)

    def save_figure(self, fig, name: str | None = None) -> Path:
        """Write ``<name>.png``; a run of a configuration other than its profile's own says
        under the figure's title what differs (:func:`state_configuration`)."""
        config = identity.configuration(self.meta["figure"], self.meta["profile"], self.meta.get("params"))
        state_configuration(fig, config)
        return atomic_save_figure(fig, self.dir / f"{name or self.figure}.png")

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """Record the end of the run; a completed run is verified and swapped in as the
        seed's folder (when this Run holds the lock), and :attr:`dir` then names it."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
        try:
            if status == "completed":
                verify_tables(self.dir)  # what was written is what is recorded, before it is called completed
            self.meta.update(
                status=status,
                finished=_now(),
                duration_s=round(_dt.datetime.now().timestamp() - self.meta["started_unix"], 3),
            )
            if error:
                self.meta["error"] = error
            self._write_meta()
            if status == "completed" and self.final is not None:
                self.dir = publish(self.dir, self.final)
        finally:
            self._release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.meta["status"] == "running":
                self.finish()
        elif self.meta["status"] != "running":
            self._release()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted", "KeyboardInterrupt")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}")


# --------------------------------------------------------------------------- loading back


def _seed_key(p: Path):
    try:
        return (0, int(p.name.split("=", 1)[1].removesuffix(ATTEMPT_SUFFIX)))
    except ValueError:
        return (1, p.name)


def _check_place(target: Path, config: identity.Configuration, seed: Any) -> None:
    """A run given its folder: one in the results layout (``<figure>/<config>/seed=<S>``,
    or its attempt) must be its own configuration's and seed's, so that a notebook run by
    hand with other values cannot write into another configuration's folder."""
    final = _final_of(target) if is_attempt(target) else target
    if final.parent.parent.name != config.figure or not final.name.startswith("seed="):
        return  # a folder of the caller's own, outside the layout: nothing to agree with
    if (final.parent.name, final.name) != (config.name, f"seed={seed}"):
        home = final.parent.parent / config.name / f"seed={seed}"
        what = (
            f"configuration {config.name} ({config.describe()})"
            if not config.default
            else f"the {config.profile} profile's own configuration"
        )
        raise ValueError(
            f"{target} is the folder of {final.parent.name}/{final.name}, but these parameters are {what}, seed {seed}: "
            f"leave results_dir at None (the folder follows from the parameters) or give {home}"
        )


def identity_problem(folder: str | os.PathLike, meta: Mapping[str, Any]) -> str | None:
    """Why the completed run in ``folder`` is not the run its place names, with the fix;
    None when its ``run.json`` (``meta``) agrees with it: the figure, the configuration (of
    the recorded profile and parameters, :func:`nfstudy.identity.configuration`) and the
    seed, ``<figure>/<config>/seed=<S>``. A copy beside the seed it copies, a seed folder
    renamed, a run filed under another profile, figure or configuration: each is named,
    with the folder it belongs in (or, when that one exists, as its duplicate)."""
    folder = Path(folder)
    seed, figure, profile = meta.get("seed"), meta.get("figure"), meta.get("profile")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        return f"its run.json records seed {seed!r}, not an integer >= 0, so no seed of any configuration: delete it"
    if not isinstance(figure, str) or not isinstance(profile, str) or not figure or not profile:
        return f"its run.json names no figure and profile ({figure!r}, {profile!r}): delete it or {_rerun_hint(None)}"
    params = meta.get("params", {})
    if not isinstance(params, dict) or ("params" not in meta and identity.figure_spec(figure) is not None):
        return f"its run.json records no parameters, so its configuration cannot be told: delete it or {_rerun_hint(meta)}"
    config = identity.configuration(figure, profile, params)
    place = (folder.parent.parent.name, folder.parent.name, folder.name)
    if place == (figure, config.name, f"seed={seed}"):
        return None
    if place[0] != figure:
        why = f"it holds a run of {figure}, not of {place[0]}"
    elif identity.profile_of(place[1]) != profile:
        why = f"it holds a {profile} run, filed under {identity.profile_of(place[1])}"
    elif place[1] != config.name:
        what = f"the {profile} profile's own configuration" if config.default else f"configuration {config.name} ({config.describe()})"
        why = f"it holds {what}, not {place[1]}"
    else:
        why = f"it is named {folder.name!r} but holds seed {seed}'s run"
    home = folder.parent.parent.parent / figure / config.name / f"seed={seed}"
    if home.exists():
        return f"{why}: a duplicate of {home}, never counted; delete it"
    return f"{why}; not counted: move it to {home}"


def seed_dirs(
    figure: str, profile: str, root: str | os.PathLike | None = None, completed_only: bool = True, *, config: Any = None
) -> list[Path]:
    """Seed folders of one configuration of a figure (the profile's own unless ``config``
    names another, see :func:`config_name`), in seed order. With ``completed_only``,
    folders whose run did not complete or is not the run its place names
    (:func:`identity_problem`) are skipped with a warning naming them and the fix, and every
    unfinished attempt (``seed=<S>.attempt``) is named in a warning too."""
    base = Path(root or results_root()) / figure / config_name(figure, profile, config)
    folders = [p for p in base.glob("seed=*") if p.is_dir() and not is_attempt(p)]
    kept, first = [], None
    for folder in sorted(folders, key=_seed_key):
        meta, problem = _read_json_object(folder / "run.json")
        status = meta.get("status") if meta else problem
        if completed_only and status != "completed":
            warnings.warn(f"skipping {folder}: run status is {status!r}, not 'completed'", stacklevel=2)
            continue
        why = identity_problem(folder, meta) if completed_only else None
        if why:
            warnings.warn(f"skipping {folder}: {why}", stacklevel=2)
            continue
        if completed_only:  # one name, one configuration: the whole hash, not only its first digits
            digest = identity.configuration(meta["figure"], meta["profile"], meta.get("params", {})).hash
            first = first or (folder, digest)
            if digest != first[1]:
                warnings.warn(
                    f"skipping {folder}: its parameters are not those of {first[0].name}, although both configurations are named "
                    f"{base.name} (their short hashes coincide); not counted: move it into a folder of its own",
                    stacklevel=2,
                )
                continue
        kept.append(folder)
    if completed_only:
        for attempt in sorted((p for p in base.glob("seed=*") if p.is_dir() and is_attempt(p)), key=_seed_key):
            status = attempt_status(attempt)
            final = _final_of(attempt)
            using = f"the completed run in {final.name} is used" if final in kept else "this seed has no completed run"
            warnings.warn(f"{attempt}: an attempt at {final.name} is {status!r} ({using}); kept for inspection", stacklevel=2)
    return kept


def _no_runs(figure: str, profile: str, root: str | os.PathLike | None, config: Any = None) -> FileNotFoundError:
    name = config_name(figure, profile, config)
    where = Path(root or results_root()) / figure / name
    present = configurations(figure, root=root)
    others = f" (configurations present: {', '.join(present)}: load one with config=NAME)" if present else ""
    run = f"run `make {figure} PROFILE={profile}` first" if name == profile else "run it first"
    return FileNotFoundError(f"no completed runs of {figure} ({name}) under {where}: {run}{others}")


def _read_verified(folder: Path, name: str, path: Path) -> pd.DataFrame:
    verify_tables(folder, [name])
    try:
        return pd.read_csv(path)  # a .csv.gz is decompressed by pandas (from its suffix)
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as error:  # a run written before tables were recorded
        raise CorruptResultError(f"{path} cannot be read as a table ({error}); {_rerun_hint(read_run(folder))}") from None


def _absent(folder: Path, name: str) -> FileNotFoundError:
    meta = read_run(folder)
    listed = isinstance((meta or {}).get("tables"), dict) and _recorded_file(meta["tables"], name)
    why = f"; its run wrote it ({listed}) but the file was not kept: {_rerun_hint(meta)}" if listed else ""
    return FileNotFoundError(f"{folder / name}.csv does not exist; tables of this run: {', '.join(sorted(table_files(folder)))}{why}")


def read_table(folder: str | os.PathLike, name: str) -> pd.DataFrame:
    """Table ``name`` of one seed folder (``<name>.csv`` or ``<name>.csv.gz``), checked against
    its ``run.json``; FileNotFoundError naming the tables the folder holds when it has none."""
    folder = Path(folder)
    path = table_files(folder).get(name)
    if path is None:
        raise _absent(folder, name)
    return _read_verified(folder, name, path)


def read_tables(folder: str | os.PathLike, exclude: Iterable[str] = ("claims",)) -> dict[str, pd.DataFrame]:
    """Every table one seed folder holds, ``{name: DataFrame}``, each checked against its
    ``run.json`` (what a figure's ``claims`` and ``plot`` take for one seed)."""
    folder = Path(folder)
    return {name: _read_verified(folder, name, path) for name, path in table_files(folder).items() if name not in set(exclude)}


def missing_tables(folders: Iterable[str | os.PathLike], exclude: Iterable[str] = ("claims",)) -> dict[Path, list[str]]:
    """Per seed folder, the tables it lacks: those its ``run.json`` lists or another of the
    ``folders`` holds, but it does not (only folders that lack one appear)."""
    folders = [Path(f) for f in folders]
    held = {f: set(table_files(f)) - set(exclude) for f in folders}
    listed = {}
    for f in folders:
        recorded = (read_run(f) or {}).get("tables")
        listed[f] = {n for n in map(table_name, recorded if isinstance(recorded, dict) else []) if n} - set(exclude)
    every = set().union(*held.values(), *listed.values()) if folders else set()
    return {f: sorted(every - held[f]) for f in folders if every - held[f]}


def load_table(
    figure: str,
    table: str,
    profile: str | None = None,
    root: str | os.PathLike | None = None,
    seeds: Iterable[int] | None = None,
    *,
    missing: str = "raise",
    config: Any = None,
) -> pd.DataFrame:
    """One table of a figure over every completed seed of one configuration, as a single
    DataFrame: the profile's own configuration (``profile`` defaults to ``paper``), or the
    one ``config`` names (``"quick+layer=44-1911ee"``, as :func:`configurations` lists them,
    or the overrides ``{"layer": 44}``); runs of different configurations are never mixed.
    Every seed's file (``<table>.csv`` or ``<table>.csv.gz``) is checked against its
    ``run.json`` (:func:`verify_tables`). A seed without the table raises FileNotFoundError
    naming it, or with ``missing="skip"`` is left out (:func:`missing_tables` says which).

    >>> df = load_table("fig2", "gradient_summary", profile="quick")   # doctest: +SKIP
    >>> df = load_table("fig2", "gradient_summary", profile="quick", config={"layer": 44})   # doctest: +SKIP
    """
    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
    name = config_name(figure, profile, config)
    profile = identity.profile_of(name)
    wanted = None if seeds is None else {int(s) for s in seeds}
    frames, folders = [], []
    for folder in seed_dirs(figure, profile, root, config=name):
        if wanted is not None and _seed_key(folder)[1] not in wanted:
            continue
        folders.append(folder)
        path = table_files(folder).get(table)
        if path is None:
            if missing == "skip":
                continue
            raise _absent(folder, table)
        frames.append(_read_verified(folder, table, path))
    if not frames:
        if folders:  # with missing="skip": no seed holds it
            raise FileNotFoundError(
                f"no completed run of {figure} ({name}) holds the table {table!r}; "
                f"tables they hold: {', '.join(sorted(set().union(*(table_files(f) for f in folders))))}"
            )
        raise _no_runs(figure, profile, root, name)
    return pd.concat(frames, ignore_index=True)


def load_tables(
    figure: str,
    profile: str | None = None,
    root: str | os.PathLike | None = None,
    exclude: Iterable[str] = ("claims",),
    *,
    missing: str = "raise",
    config: Any = None,
) -> dict[str, pd.DataFrame]:
    """Every table of a figure over all completed seeds of one configuration (as
    :func:`load_table`): ``{table name: DataFrame}``. With ``missing="skip"`` a table is
    taken from the seeds that hold it (and left out when none does); otherwise a seed
    lacking a table another holds raises FileNotFoundError."""
    name = config_name(figure, profile, config)
    profile = identity.profile_of(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_table names each skipped run once
        folders = seed_dirs(figure, profile, root, config=name)
    if not folders:
        raise _no_runs(figure, profile, root, name)
    names = sorted(set().union(*(table_files(f) for f in folders)) - set(exclude))
    return {table: load_table(figure, table, profile, root, missing=missing, config=name) for table in names}


def rewrite_table(folder: str | os.PathLike, name: str, df: pd.DataFrame, why: str) -> Path:
    """Replace table ``name`` of a completed seed folder (claims re-derived from its stored
    tables, say), under the seed's lock: the file is written atomically, its checksum
    recorded in ``run.json`` with a note in ``rederived`` (when, why, the commit, the
    previous checksum). A table equal to the stored one changes nothing. Returns its file."""
    folder = Path(folder)
    meta, problem = _read_json_object(folder / "run.json")
    if meta is None:
        raise CorruptResultError(f"{folder / 'run.json'}: {problem}; {_rerun_hint(None)} or delete {folder}")
    if meta.get("status") != "completed":
        raise ValueError(f"{folder} holds no completed run (status {meta.get('status')!r}): run the seed first")
    with acquire_lock(folder, what=f"{meta.get('figure')} seed {meta.get('seed')} ({meta.get('profile')})"):
        meta = read_run(folder) or meta  # as it is now that no run can swap the folder
        recorded = meta.get("tables") if isinstance(meta.get("tables"), dict) else {}
        before = recorded.get(_recorded_file(recorded, name) or "", {}).get("sha256")
        suffix, data = encode_table(_with_seed(df, meta.get("seed")))
        if _sha256(data) == before and (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"  # the same table: nothing to write, nothing to note
        _store_table(folder, meta, name, df, meta.get("seed"))
        meta.setdefault("rederived", []).append(
            {
                "table": _recorded_file(meta["tables"], name),
                "why": why,
                "at": _now(),
                "git": _git(),
                "nfstudy": _versions()["nfstudy"],
                "command": os.environ.get("NFSTUDY_COMMAND") or " ".join(sys.argv),
                "previous_sha256": before,
            }
        )
        atomic_write_json(meta, folder / "run.json")
    return folder / _recorded_file(meta["tables"], name)
