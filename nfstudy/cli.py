"""``python -m nfstudy``: list figures, run them through their notebooks, aggregate seeds.

    python -m nfstudy list [fig2 ...] [--markdown]
    python -m nfstudy run fig2 --profile quick --seeds 0 1 2 [-p layer 44] [--param depth=56]
    python -m nfstudy run fig1 --seeds 0-4 --launcher slurm --partition gpu   (nfstudy/launch.py)
    python -m nfstudy aggregate fig2 --profile quick [-p layer 44 | --config quick+layer=44-1911ee]
    python -m nfstudy claims fig2 --profile quick     # re-derive each seed's claims from its tables
    python -m nfstudy report

``run`` executes ``notebooks/<figure>.ipynb`` with papermill once per seed, writing the
executed notebook, tables, figure, claims and ``run.json`` into
``results/<figure>/<config>/seed=<S>/`` (``<config>``: the profile for its own parameters,
else ``<profile>+<what differs>-<hash>``, :mod:`nfstudy.identity`), then draws the figure
and the claims over every seed of that configuration (``aggregate``, which takes the same
``-p``/``--dataset`` options to name it). The Makefile's figure targets call these commands.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["FIGURE_PACKAGE", "aggregate", "figure_package", "load_figure", "main", "run_figure"]

# What every template's parameters cell has besides the experiment's own parameters.
RUN_PARAMETERS = ("profile", "seed", "device", "results_dir")
KERNEL_LOG = "kernel-stderr.log"
# Set (to anything but "" or "0"), `run` and `aggregate` start every line they print with
# "[<figure>] ": `make quick` runs figures side by side and their lines stay apart.
PREFIX_ENV = "NFSTUDY_OUTPUT_PREFIX"


def _root() -> Path:
    from .runs import project_root

    root = project_root()
    if root is None:
        raise SystemExit(
            "nfstudy's notebooks live in its repository checkout; "
            "install it with `pip install -e <checkout>` (make setup does) to run figures."
        )
    return root


# The import name of the figure package, the folder experiments/ (pyproject.toml maps one
# to the other): a name of nfstudy's own, so that installing it adds no generic `experiments`.
FIGURE_PACKAGE = "nfstudy_experiments"


def figure_package() -> ModuleType:
    """The figure package (``FIGURES``, ``load``, ``params_for``), imported from the checkout
    this ``nfstudy`` comes from: with two checkouts (a worktree run with ``PYTHONPATH`` and
    another checkout's editable install) the figures match the library. An installed
    nfstudy (no checkout) imports the installed package. The library never imports it."""
    if FIGURE_PACKAGE in sys.modules:
        return sys.modules[FIGURE_PACKAGE]
    from .runs import project_root

    root = project_root()
    init = root / "experiments" / "__init__.py" if root else None
    if init is None or not init.is_file():
        return importlib.import_module(FIGURE_PACKAGE)
    spec = importlib.util.spec_from_file_location(FIGURE_PACKAGE, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[FIGURE_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[FIGURE_PACKAGE]
        raise
    return module


def load_figure(figure: str) -> ModuleType:
    """The module of one figure (its Params, PROFILES, TABLES, run, plot, claims, TITLE)."""
    return figure_package().load(figure)


def figures_available() -> tuple[str, ...]:
    """Every figure, in the report's order (the figure package's ``FIGURES``)."""
    return figure_package().FIGURES


def figure_modules() -> dict[str, ModuleType]:
    """Every figure's module, name -> module, in the report's order."""
    return {figure: load_figure(figure) for figure in figures_available()}


def _experiment(figure: str):
    return load_figure(figure)


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string


def _overrides(args) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in args.p or []:
        found[name] = _parse_value(value)
    for item in args.param or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param takes name=value, got {item!r}")
        found[name.strip()] = _parse_value(value.strip())
    if args.dataset:
        if _takes_data(_experiment(args.figure)):
            found["dataset"] = args.dataset
        else:  # `make figs DATASET=...` runs every figure, this one too
            print(f"[nfstudy] {args.figure} takes no data: --dataset {args.dataset} is ignored", file=sys.stderr)
    return found


def _p_as_param(argv: list[str]) -> list[str]:
    """``-p NAME VALUE`` as ``--param=NAME=VALUE``, so that a VALUE starting with '-'
    (``-p lrs -0.1,1``) is not taken for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "-p" and i + 2 < len(argv) and not argv[i + 1].startswith("-"):
            out.append(f"--param={argv[i + 1]}={argv[i + 2]}")
            i += 3
        else:
            out.append(argv[i])
            i += 1
    return out


def _local_kernel_manager(socket_dir: str):
    """A kernel manager whose kernel talks over Unix sockets in ``socket_dir``: the kernel
    is on this machine anyway, so no TCP ports are opened (and ipykernel does not warn of
    unencrypted TCP on every run). None (papermill's default, TCP) where there are no Unix
    sockets."""
    if os.name != "posix":
        return None
    from jupyter_client.manager import AsyncKernelManager

    class LocalKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = os.path.join(socket_dir, "kernel")  # socket files: kernel-<n>

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            # The kernel process's own stderr (not the cells' output, which comes over its
            # sockets) goes to a log: after a Ctrl-C it is ~20 lines of ZMQError.
            # _execute shows its tail when the kernel dies.
            with open(os.path.join(socket_dir, KERNEL_LOG), "ab") as log:
                kw.setdefault("stderr", log)
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LocalKernelManager


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (it names the folder seed=<S> and seeds every draw), got {seed!r}")
    return seed


def _takes_data(module) -> bool:
    return any(f.name == "dataset" for f in dataclasses.fields(module.Params))


def _check_data(params) -> None:
    """The figure's data is checked here (nfstudy.data.prepare_dataset: CIFAR-10 and
    Fashion-MNIST found, downloaded unless offline, MD5-verified; every file of an image
    folder opened), so that missing or corrupt data is one line before the seed's folder
    is touched. The notebook runs in the repository root: an image folder given relative
    to another folder is refused, with its absolute path to give instead."""
    dataset = getattr(params, "dataset", None)
    if dataset is None:
        return
    from .data import image_folder_path, prepare_dataset

    folder = image_folder_path(dataset)
    if folder is not None and not folder.is_absolute() and Path.cwd().resolve() != _root().resolve():
        raise ValueError(
            f"the image folder {folder} is relative to {Path.cwd()}, but the run reads it from {_root()}: "
            f"give it as --dataset imagefolder:{folder.resolve()}"
        )
    prepare_dataset(dataset)


def run_figure(
    figure: str,
    profile: str = "paper",
    seed: int = 0,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    results_root: str | os.PathLike | None = None,
    log_output: bool = True,
) -> Path:
    """Execute one seed of ``figure``'s notebook; returns the seed's folder.

    Parameters, device and offline data are checked before the seed's folder is touched.
    The seed's folder is that of the run's configuration (:mod:`nfstudy.identity`):
    ``<figure>/<profile>/seed=<S>`` for the profile's own parameters, else
    ``<figure>/<profile>+<what differs>-<hash>/seed=<S>``, so that a run with other
    parameters never replaces or joins the profile's. The notebook runs in the seed's attempt
    folder (``seed=<S>.attempt``), under the seed's lock, and is swapped in as ``seed=<S>``
    once it has completed: a run that fails or is
    interrupted leaves the last completed result as it was, and its own attempt (run.json,
    executed notebook, checkpoints) for inspection and to resume from.
    """
    import papermill as pm

    from . import runs
    from .identity import configuration
    from .params import resolve
    from .runtime import resolve_device

    module = _experiment(figure)
    _check_seed(seed)
    overrides = dict(overrides or {})
    reserved = sorted(set(overrides) & set(RUN_PARAMETERS))
    if reserved:
        raise ValueError(f"set {', '.join(reserved)} with its own option (--profile, --seed, --device), not as a parameter")
    params = resolve(module.PROFILES, profile, overrides)  # every check of the figure's Params, before any folder
    resolve_device(device)  # an unavailable device fails here, not inside a kernel
    _check_data(params)
    config = configuration(figure, profile, params)  # its folder: the profile's own, or the variant's
    final = runs.run_dir(figure, profile, seed, results_root, config=config.name)
    what = f"{figure} seed {seed} ({config.name})"
    with runs.acquire_lock(final, what=what) as lock:
        if lock.stale:
            print(
                f"[nfstudy] cleared the stale lock of a run that no longer runs: pid {lock.stale.get('pid')}, "
                f"started {lock.stale.get('started')}",
                file=sys.stderr,
            )
        attempt = runs.prepare_attempt(final)
        notebook = attempt / f"{figure}.ipynb"
        kept = f"; the completed run of this seed is unchanged in {final}" if runs.read_run(final) else ""
        parameters = {"profile": profile, "seed": seed, "device": device, "results_dir": str(attempt)}
        parameters.update({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()})
        print(f"[nfstudy] {figure} profile={profile} seed={seed} device={device} -> {final}", file=sys.stderr)
        if not config.default:
            print(f"[nfstudy] configuration {config.name}: {config.describe()}; not the profile's own, kept apart from it", file=sys.stderr)
        started = time.time()
        os.environ.setdefault("NFSTUDY_COMMAND", " ".join(["python -m nfstudy", *sys.argv[1:]]))
        try:
            _execute(pm, figure, notebook, parameters, log_output)
        except KeyboardInterrupt:
            # The kernel dies with the interrupt: nbclient's cell task then ends with an exception
            # nobody retrieves, which asyncio logs as a traceback when the task is collected.
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            _mark_if_running(attempt, "interrupted", "KeyboardInterrupt")
            raise RunInterrupted(f"{what} interrupted: the attempt is kept in {attempt} (run the same command to resume){kept}") from None
        except pm.PapermillExecutionError as error:
            if error.ename == "KeyboardInterrupt":
                _mark_if_running(attempt, "interrupted", "KeyboardInterrupt")
                raise RunInterrupted(
                    f"{what} interrupted: the attempt is kept in {attempt} (run the same command to resume){kept}"
                ) from None
            _mark_if_running(attempt, "failed", f"{error.ename}: {error.evalue}")
            raise RunFailed(
                f"{what} failed: {error.ename}: {error.evalue}\n  the executed notebook, with the traceback, is {notebook}{kept}"
            ) from None
        except BaseException as error:
            _mark_if_running(attempt, "failed", f"{type(error).__name__}: {error}")
            raise
        meta = runs.read_run(attempt)
        if not meta or meta.get("status") != "completed":
            _mark_if_running(attempt, "failed", "the notebook ended without run.finish()")
            raise RunFailed(f"{what}: the notebook {notebook} ended without completing its run (run.finish()){kept}")
        runs.publish(attempt, final)
    print(f"[nfstudy] {figure} seed={seed} done in {time.time() - started:.1f}s", file=sys.stderr)
    return final


def _execute(pm, figure: str, notebook: Path, parameters: dict[str, Any], log_output: bool) -> None:
    backend = os.environ.pop("MPLBACKEND", None)  # the kernel draws with its inline backend
    sockets = tempfile.TemporaryDirectory(prefix="nfstudy-kernel-")
    manager = _local_kernel_manager(sockets.name)
    try:
        pm.execute_notebook(
            str(_root() / "notebooks" / f"{figure}.ipynb"),
            str(notebook),
            parameters=parameters,
            cwd=str(_root()),
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            stdout_file=sys.stdout if log_output else None,
            stderr_file=sys.stderr if log_output else None,
            **({"kernel_manager_class": manager} if manager else {}),
        )
    except (KeyboardInterrupt, pm.PapermillExecutionError):
        raise
    except BaseException:  # the kernel died, or could not start: what it said is the clue
        with contextlib.suppress(OSError):
            tail = Path(sockets.name, KERNEL_LOG).read_text(errors="replace").strip().splitlines()[-20:]
            if tail:
                print("[nfstudy] the kernel's last words:\n  " + "\n  ".join(tail), file=sys.stderr)
        raise
    finally:
        sockets.cleanup()
        if backend is not None:
            os.environ["MPLBACKEND"] = backend


class RunFailed(RuntimeError):
    """A figure's notebook raised; the message names the error and the notebook."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message names what is kept."""


def _mark_if_running(folder: Path, status: str, error: str) -> None:
    from . import runs

    meta = runs.read_run(folder)
    if meta is not None and meta.get("status") == "running":
        runs.mark_run(folder, status, error)


def aggregate(figure: str, profile: str | None = "paper", results_root: str | os.PathLike | None = None, config: Any = None):
    """Draw ``<figure>.png`` and ``claims.csv`` over every completed seed of one
    configuration (the profile's own; ``config``: a configuration's name, or overrides of
    the profile's parameters, as ``run`` takes them); print the claims."""
    import pandas as pd

    from . import runs
    from .report import aggregate as aggregate_files

    name = runs.config_name(figure, profile, config)
    image, summary = aggregate_files(figure, None, results_root, config=name)
    with pd.option_context("display.max_colwidth", 70, "display.width", 200):
        print(
            summary[
                ["kind", "claim", "value", "comparison", "threshold", "threshold_high", "outcome", "n_passed", "n_evaluable", "n_seeds"]
            ].to_string(index=False)
        )
    print(f"[nfstudy] {figure} ({name}): {image}, {image.parent / 'claims.csv'}", file=sys.stderr)
    others = [c for c in runs.configurations(figure, root=results_root) if c != name]
    if others:
        print(f"[nfstudy] {figure}: other configurations, each aggregated apart (--config NAME): {', '.join(others)}", file=sys.stderr)
    return summary


def _cmd_list(args) -> int:
    from .params import check_choice

    names = [check_choice("figure", f, figures_available()) for f in args.figures] or list(figures_available())
    modules = {figure: load_figure(figure) for figure in dict.fromkeys(names)}
    if args.markdown:  # the generated reference, docs/reference.md
        from .reference import markdown

        sys.stdout.write(markdown(modules))
        return 0
    for figure, module in modules.items():
        print(f"{figure}: {module.TITLE}")
        profiles = module.PROFILES
        for field in dataclasses.fields(module.Params):
            per_profile = "  ".join(f"{p}={getattr(v, field.name)!r}" for p, v in profiles.items())
            print(f"    {field.name:<22} {per_profile}")
    return 0


def _device_for(seed: int, device: str, gpus: str | None) -> str:
    """With ``--gpus 0,1,2,3`` seed S runs on cuda:<gpus[S mod 4]>, so `make -j` spreads seeds."""
    if not gpus:
        return device
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise ValueError(f"--gpus takes a comma-separated list of GPU indices such as 0,1,2,3, got {gpus!r}")
    return f"cuda:{ids[seed % len(ids)]}"


def _cmd_run(args) -> int:
    from .launch import check_options, launch, parse_seeds

    if args.launcher:
        return launch(args)
    check_options(args)
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    overrides = _overrides(args)
    try:
        for seed in seeds:
            device = _device_for(seed, args.device, args.gpus)
            run_figure(args.figure, args.profile, seed, device, overrides, args.results)
    except RunFailed as error:
        print(f"[nfstudy] {error}", file=sys.stderr)
        return 1
    if not args.no_aggregate:
        aggregate(args.figure, args.profile, args.results, overrides or None)
    return 0


def _selected(args) -> tuple[str, Any]:
    """The profile and configuration ``aggregate`` and ``claims`` act on: ``--config NAME``,
    or the profile's parameters with ``-p``/``--param``/``--dataset`` (as ``run`` takes
    them: the configuration a ``run`` with the same options wrote), or the profile's own."""
    overrides = _overrides(args)
    if args.config:
        if overrides:
            raise ValueError("give --config NAME or the configuration's parameters (-p, --param, --dataset), not both")
        from .identity import profile_of

        return args.profile or profile_of(args.config), args.config
    return args.profile or "paper", overrides or None


def _cmd_aggregate(args) -> int:
    profile, config = _selected(args)
    aggregate(args.figure, profile, args.results, config)
    return 0


def _cmd_claims(args) -> int:
    import pandas as pd

    from .report import rederive_claims

    profile, config = _selected(args)
    changes = rederive_claims(args.figure, profile, args.results, config)
    for folder, changed in changes.items():
        if changed.empty:
            print(f"[nfstudy] {folder}: claims unchanged", file=sys.stderr)
            continue
        print(f"[nfstudy] {folder}: {len(changed)} claim(s) changed (run.json records it):", file=sys.stderr)
        with pd.option_context("display.max_colwidth", 70, "display.width", 200):
            print(changed.to_string(index=False), file=sys.stderr)
    aggregate(args.figure, profile, args.results, config)
    return 0


def _cmd_report(args) -> int:
    from .report import build_report

    path = build_report(args.results)
    print(f"[nfstudy] report: {path}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nfstudy",
        description=__doc__.split("\n\n")[0],
        epilog="--debug (anywhere) or NFSTUDY_DEBUG=1: show the traceback of an error",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="figures and their parameters per profile")
    listing.add_argument("figures", nargs="*", metavar="FIGURE", help="only these figures (default: every one)")
    listing.add_argument("--markdown", action="store_true", help="the reference page (docs/reference.md) in Markdown")
    listing.set_defaults(func=_cmd_list)

    run = sub.add_parser("run", help="run a figure's notebook for one or more seeds")
    run.add_argument("figure")
    run.add_argument("--profile", default="paper", help="paper | quick (default paper)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--seeds", nargs="+", metavar="SEEDS", help="several seeds: 0-9, 0,2,5, or 0 1 2; one after the other, or as jobs with --launcher"
    )
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    run.add_argument("--gpus", help="e.g. 0,1,2,3: seed S runs on the GPU listed at S mod 4 (several GPUs)")
    run.add_argument("--dataset", help="override the profile's dataset: cifar10 | fashion | digits | synthetic | imagefolder:PATH")
    run.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a parameter, as papermill's -p")
    run.add_argument("--param", action="append", metavar="NAME=VALUE", help="a parameter")
    run.add_argument("--results", help="results root (default results/ or $NFSTUDY_RESULTS)")
    run.add_argument("--no-aggregate", action="store_true", help="skip the cross-seed figure and claims")
    sweep = run.add_argument_group("sweeps", "one job per seed (nfstudy/launch.py, needs submitit)")
    sweep.add_argument("--launcher", help="local: local processes (one per visible GPU), then aggregate | slurm: submit to SLURM")
    sweep.add_argument("--partition", help="SLURM partition")
    sweep.add_argument("--account", help="SLURM account")
    sweep.add_argument("--gpus-per-job", type=int, help="GPUs per SLURM job (default 1)")
    sweep.add_argument("--timeout-min", type=float, help="a job's time limit in minutes (default: SLURM 1 day, local 1 week)")
    sweep.add_argument("--jobs", type=int, help="local CPU processes at a time (default: half the cores; with GPUs one per GPU)")
    run.set_defaults(func=_cmd_run)

    agg = sub.add_parser("aggregate", help="the cross-seed figure and claims of one configuration of a figure")
    agg.add_argument("figure")
    _configuration_options(agg)
    agg.set_defaults(func=_cmd_aggregate)

    rederive = sub.add_parser(
        "claims",
        help="re-derive every completed seed's claims.csv from its stored tables (after changing a figure's claims), then aggregate",
    )
    rederive.add_argument("figure")
    _configuration_options(rederive)
    rederive.set_defaults(func=_cmd_claims)

    report = sub.add_parser("report", help="results/README.md: every figure present, its claims and run facts")
    report.add_argument("--results", help="results root (default results/ or $NFSTUDY_RESULTS)")
    report.set_defaults(func=_cmd_report)
    return parser


def _configuration_options(parser: argparse.ArgumentParser) -> None:
    """The options that name one configuration of a figure (``aggregate``, ``claims``)."""
    parser.add_argument("--profile", help="paper | quick (default paper, or that of --config)")
    parser.add_argument("--dataset", help="the configuration run with --dataset (as `run` takes it)")
    parser.add_argument(
        "-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a parameter of the configuration, as `run` takes it"
    )
    parser.add_argument("--param", action="append", metavar="NAME=VALUE", help="a parameter of the configuration")
    parser.add_argument("--config", help="a configuration by its folder's name (quick+layer=44-1911ee); default: the profile's own")
    parser.add_argument("--results", help="results root (default results/ or $NFSTUDY_RESULTS)")


def _oserror_line(error: OSError, results: str | None) -> str:
    """One line for an OSError on a file or folder: what failed, where, and the fix."""
    from .data import data_root
    from .runs import results_root

    path = Path(error.filename) if error.filename else None
    reason = error.strerror or type(error).__name__
    if path is None:
        return f"{reason}: {error}"
    try:
        results_dir = Path(results or results_root()).resolve()
        data_dir = data_root().resolve()
        where = path.resolve()
    except OSError:
        results_dir = data_dir = where = None
    if where is not None and (where == results_dir or results_dir in where.parents):
        fix = "make that folder writable (with free space), or write the results elsewhere with --results DIR or NFSTUDY_RESULTS"
    elif where is not None and (where == data_dir or data_dir in where.parents):
        fix = "make that folder writable, or point NFSTUDY_DATA at another data folder"
    else:
        fix = "check that the path is a folder you can write to"
    return f"cannot use {path}: {reason}. Fix: {fix}"


def _expected(error: BaseException) -> bool:
    """Failures a user can fix (bad parameters, missing or corrupt files, folders), as
    opposed to bugs, which keep their traceback."""
    from .data import DatasetNotFoundError
    from .runs import CorruptResultError, SeedBusyError

    if isinstance(error, (ValueError, TypeError, OSError, DatasetNotFoundError, CorruptResultError, SeedBusyError)):
        return True
    return isinstance(error, RuntimeError) and str(error).startswith("device ")  # nfstudy.runtime.resolve_device


class PrefixedLines:
    """A text stream that starts every line written to ``stream`` with ``prefix`` and writes
    whole lines only (a line ends at "\\n" or, for a progress bar redrawn in place, "\\r"), so
    that the lines of processes sharing a terminal do not mix. :meth:`close` writes a last
    unfinished line."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self._pending = stream, prefix, ""

    def write(self, text: str) -> int:
        *lines, self._pending = re.split(r"(?<=[\n\r])", self._pending + text)
        if lines:
            self.stream.write("".join(self.prefix + line for line in lines))
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self._pending:
            self.write("\n")

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def _prefixed_output(args):
    """``[fig1] `` before every line of ``run`` and ``aggregate`` when ``NFSTUDY_OUTPUT_PREFIX`` is set."""
    figure = getattr(args, "figure", None)
    if not figure or os.environ.get(PREFIX_ENV, "") in ("", "0"):
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PrefixedLines(sys.stdout, f"[{figure}] "), PrefixedLines(sys.stderr, f"[{figure}] ")
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.close()
        sys.stdout, sys.stderr = saved


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("NFSTUDY_DEBUG", "") not in ("", "0")
    argv = _p_as_param([a for a in argv if a != "--debug"])
    args = _parser().parse_args(argv)
    with _prefixed_output(args):
        return _main(args, debug)


def _main(args, debug: bool) -> int:
    from .compat import TorchvisionOpsUnavailable

    warnings.simplefilter("ignore", TorchvisionOpsUnavailable)
    shown = warnings.formatwarning
    if not debug:  # a skipped run is one line naming it and the fix, not a file:line and source line
        warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except KeyboardInterrupt as error:
        print(f"[nfstudy] {error}" if str(error) else "[nfstudy] interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug or not _expected(error):
            raise
        if isinstance(error, OSError) and error.filename:
            line = _oserror_line(error, getattr(args, "results", None))
        else:
            line = str(error).replace("\n", " ")
        print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown
        with contextlib.suppress(Exception):
            sys.stdout.flush()
