"""``python -m nfstudy``: list figures, run them through their notebooks, aggregate seeds.

    python -m nfstudy list
    python -m nfstudy run fig2 --profile quick --seeds 0 1 2 [-p layer 44] [--param depth=56]
    python -m nfstudy aggregate fig2 --profile quick
    python -m nfstudy report

``run`` executes ``notebooks/<figure>.ipynb`` with papermill once per seed, writing the
executed notebook, tables, figure, claims and ``run.json`` into
``results/<figure>/<profile>/seed=<S>/``, then draws the figure and the claims over every
seed present (``aggregate``). The Makefile's figure targets call these commands.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["aggregate", "main", "run_figure"]

# What every template's parameters cell has besides the experiment's own parameters.
RUN_PARAMETERS = ("profile", "seed", "device", "results_dir")


def _root() -> Path:
    from .runs import project_root

    root = project_root()
    if root is None:
        raise SystemExit(
            "nfstudy's notebooks and experiments live in its repository checkout; "
            "install it with `pip install -e <checkout>` (make setup does) to run figures."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def figures_available() -> list[str]:
    return sorted(p.stem for p in (_root() / "notebooks").glob("*.ipynb"))


def _experiment(figure: str):
    from .params import check_choice

    check_choice("figure", figure, figures_available())
    import experiments

    return experiments.load(figure)


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
        found["dataset"] = args.dataset
    return found


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

    return LocalKernelManager


def run_figure(
    figure: str,
    profile: str = "paper",
    seed: int = 0,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    results_root: str | os.PathLike | None = None,
    log_output: bool = True,
) -> Path:
    """Execute one seed of ``figure``'s notebook; returns the run folder.

    Parameters are checked before any kernel starts. A failing or interrupted run is
    marked so in ``run.json`` and its executed notebook is kept for inspection.
    """
    import papermill as pm

    from . import runs
    from .params import resolve
    from .runtime import resolve_device

    module = _experiment(figure)
    overrides = dict(overrides or {})
    reserved = sorted(set(overrides) & set(RUN_PARAMETERS))
    if reserved:
        raise ValueError(f"set {', '.join(reserved)} with its own option (--profile, --seed, --device), not as a parameter")
    resolve(module.PROFILES, profile, overrides)  # unknown names or bad types fail here, not in a kernel
    resolve_device(device)  # an unavailable device fails here, not inside a kernel
    folder = runs.run_dir(figure, profile, seed, results_root)
    folder.mkdir(parents=True, exist_ok=True)
    notebook = folder / f"{figure}.ipynb"
    partial = folder / f".{figure}.partial.ipynb"
    parameters = {"profile": profile, "seed": seed, "device": device, "results_dir": str(folder)}
    parameters.update({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()})
    print(f"[nfstudy] {figure} profile={profile} seed={seed} device={device} -> {folder}", file=sys.stderr)
    started = time.time()
    os.environ.setdefault("NFSTUDY_COMMAND", " ".join(["python -m nfstudy", *sys.argv[1:]]))
    backend = os.environ.pop("MPLBACKEND", None)  # the kernel draws with its inline backend
    sockets = tempfile.TemporaryDirectory(prefix="nfstudy-kernel-")
    manager = _local_kernel_manager(sockets.name)
    try:
        pm.execute_notebook(
            str(_root() / "notebooks" / f"{figure}.ipynb"),
            str(partial),
            parameters=parameters,
            cwd=str(_root()),
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            stdout_file=sys.stdout if log_output else None,
            stderr_file=sys.stderr if log_output else None,
            **({"kernel_manager_class": manager} if manager else {}),
        )
    except KeyboardInterrupt:
        runs.mark_run(folder, "interrupted", "KeyboardInterrupt")
        raise
    except pm.PapermillExecutionError as error:
        _mark_if_running(folder, "failed", f"{error.ename}: {error.evalue}")
        raise RunFailed(
            f"{figure} seed {seed} failed: {error.ename}: {error.evalue}\n"
            f"  the executed notebook, with the traceback, is {notebook}"
        ) from None
    except BaseException as error:
        _mark_if_running(folder, "failed", f"{type(error).__name__}: {error}")
        raise
    finally:
        sockets.cleanup()
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
        if partial.exists():
            os.replace(partial, notebook)
    print(f"[nfstudy] {figure} seed={seed} done in {time.time() - started:.1f}s", file=sys.stderr)
    return folder


class RunFailed(RuntimeError):
    """A figure's notebook raised; the message names the error and the notebook."""


def _mark_if_running(folder: Path, status: str, error: str) -> None:
    from . import runs

    meta = runs.read_run(folder)
    if meta is not None and meta.get("status") == "running":
        runs.mark_run(folder, status, error)


def aggregate(figure: str, profile: str = "paper", results_root: str | os.PathLike | None = None):
    """Draw ``<figure>.png`` and ``claims.csv`` over every completed seed; print the claims."""
    import pandas as pd

    from .report import aggregate as aggregate_files

    image, summary = aggregate_files(figure, profile, results_root)
    with pd.option_context("display.max_colwidth", 70, "display.width", 200):
        print(summary[["kind", "claim", "value", "comparison", "threshold", "threshold_high", "outcome", "n_passed", "n_evaluable", "n_seeds"]].to_string(index=False))
    print(f"[nfstudy] {figure} ({profile}): {image}, {image.parent / 'claims.csv'}", file=sys.stderr)
    return summary


def _cmd_list(args) -> int:
    import experiments

    for figure in figures_available():
        module = experiments.load(figure)
        title = (module.__doc__ or "").strip().splitlines()[0]
        print(f"{figure}: {title}")
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
    seeds = args.seeds if args.seeds else [args.seed]
    overrides = _overrides(args)
    try:
        for seed in seeds:
            device = _device_for(seed, args.device, args.gpus)
            run_figure(args.figure, args.profile, seed, device, overrides, args.results)
    except RunFailed as error:
        print(f"[nfstudy] {error}", file=sys.stderr)
        return 1
    if not args.no_aggregate:
        aggregate(args.figure, args.profile, args.results)
    return 0


def _cmd_aggregate(args) -> int:
    aggregate(args.figure, args.profile, args.results)
    return 0


def _cmd_report(args) -> int:
    from .report import build_report

    path = build_report(args.results)
    print(f"[nfstudy] report: {path}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nfstudy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="figures and their parameters per profile").set_defaults(func=_cmd_list)

    run = sub.add_parser("run", help="run a figure's notebook for one or more seeds")
    run.add_argument("figure")
    run.add_argument("--profile", default="paper", help="paper | quick (default paper)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--seeds", type=int, nargs="+", help="several seeds, one after the other")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    run.add_argument("--gpus", help="e.g. 0,1,2,3: seed S runs on the GPU listed at S mod 4 (several GPUs)")
    run.add_argument("--dataset", help="override the profile's dataset: cifar10 | digits | synthetic")
    run.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a parameter, as papermill's -p")
    run.add_argument("--param", action="append", metavar="NAME=VALUE", help="a parameter")
    run.add_argument("--results", help="results root (default results/ or $NFSTUDY_RESULTS)")
    run.add_argument("--no-aggregate", action="store_true", help="skip the cross-seed figure and claims")
    run.set_defaults(func=_cmd_run)

    agg = sub.add_parser("aggregate", help="the cross-seed figure and claims of a figure")
    agg.add_argument("figure")
    agg.add_argument("--profile", default="paper")
    agg.add_argument("--results")
    agg.set_defaults(func=_cmd_aggregate)

    report = sub.add_parser("report", help="results/README.md: every figure present, its claims and run facts")
    report.add_argument("--results", help="results root (default results/ or $NFSTUDY_RESULTS)")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .compat import TorchvisionOpsUnavailable

    warnings.simplefilter("ignore", TorchvisionOpsUnavailable)
    try:
        return args.func(args)
    except (ValueError, TypeError, IndexError, FileNotFoundError, RuntimeError) as error:
        if os.environ.get("NFSTUDY_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
