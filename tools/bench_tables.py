"""The tables of benchmarks/README.md from the benchmarks' JSON lines (``--jsonl``).

    python tools/bench_tables.py bench.jsonl [more.jsonl ...] [--summary results/gpu_check/summary.json]
    python tools/bench_tables.py bench.jsonl --fig1-epochs 200 [--fig1-images 60000]

The first form prints Markdown: the machine, gpu-check's steps (with ``--summary``), one
run's training step per variant, fused N runs against one at a time, the engine against
the reproduction's loop, the landscape probe's and AGC's ratios to their baselines, and
the paper profiles' cost per figure in device-hours, one run at a time and fused, from the
measured step times (:func:`figure_costs`). The second prints ``EPOCHS=<E>``: how many
epochs of Fig. 1's paper series (fused, one group per norm) fit in a run of that many seconds
(:func:`fig1_plan`); when not one epoch of them all fits, ``SERIES=[...]``, the norms' groups
one epoch of which fits, or ``EPOCHS=0``: nothing fits, start no run that would be killed.

The step time of a group of N runs trained together is ``N / fused steps/s`` (N = 1: one
run alone, through ``nfstudy.train.train``); between measured N it is interpolated linearly
in N, beyond the largest extrapolated from the last two (said so in the table).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

# Fig. 1's groups as the figure trains them fused: one stacked network per norm.
SAFETY = 0.85  # --fig1-epochs uses this share of the seconds: step-time noise (two calibrations of one group: 121 and 142 ms)
EVAL_SHARE = 0.06  # an epoch's test pass (10,000 images, forward only) against its training steps
# What a fig1 run spends besides its groups' steps, measured on the first GPU session (H200,
# 2026-12-04; benchmarks/gpu/fig1_fashion_h200/): 9 s from the command to the run folder
# (papermill's kernel, imports), the first group 19 s over its calibrated steps (Fashion-MNIST
# loaded and padded, CUDA and cuDNN initialised, its test pass), each later group 3.4 s over
# (cuDNN autotuning of its shapes, the stack's first trace, its test pass). Rounded up:
STARTUP_S = 25.0  # kernel, imports, data, CUDA initialisation: once per run
GROUP_START_S = 5.0  # per group: autotuning, the first trace
FINISH_S = 10.0  # the tables, the plot, the claims, the notebook saved


def read_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every record of the JSON-lines files, in order; a line that is not JSON (a
    half-written last line of a killed run) is skipped."""
    records = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"[bench_tables] {path}: skipped a line that is not JSON: {line[:60]}...", file=sys.stderr)
    return records


def _kind(records, bench: str, kind: str) -> list[dict]:
    return [r for r in records if r.get("bench") == bench and r.get("kind") == kind]


# --------------------------------------------------------------------------- step times


class StepTimes:
    """Seconds per step of a group of N runs of one shape (model, norm, batch, image) trained
    together, from bench_train's ``fused`` records (their alone and fused steps/s)."""

    def __init__(self, records: list[dict]):
        self.points: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in _kind(records, "bench_train", "fused"):
            key = (r["model"], r["norm"], int(r["batch"]), int(r["image"]))
            if r.get("alone_steps_per_s"):
                self.points[key][1].append(1.0 / r["alone_steps_per_s"])
            if r.get("fused_steps_per_s"):
                self.points[key][int(r["n"])].append(int(r["n"]) / r["fused_steps_per_s"])

    def shapes(self) -> list[tuple]:
        return list(self.points)

    def measured(self, key: tuple) -> dict[int, float]:
        return {n: statistics.median(v) for n, v in sorted(self.points.get(key, {}).items())}

    def seconds(self, key: tuple, n: int) -> tuple[float, str]:
        """(seconds per group step, how it was had: measured | interpolated | extrapolated);
        NaN and "not measured" without two points to go on."""
        known = self.measured(key)
        if n in known:
            return known[n], "measured"
        ns = sorted(known)
        if len(ns) < 2:
            return math.nan, "not measured"
        below = [m for m in ns if m < n]
        above = [m for m in ns if m > n]
        if below and above:
            a, b, how = below[-1], above[0], "interpolated"
        elif below:
            a, b, how = ns[-2], ns[-1], "extrapolated"
        else:
            a, b, how = ns[0], ns[1], "extrapolated"
        t = known[a] + (known[b] - known[a]) * (n - a) / (b - a)
        return max(t, 0.0), how


def _interp_batch(times: StepTimes, model: str, norm: str, batch: int, n: int, image: int = 32) -> tuple[float, str]:
    """Seconds per group step at ``batch``: measured, or the per-image time interpolated
    linearly in log2(batch) between the nearest measured batches (the nearest one's
    per-image time beyond them)."""
    t, how = times.seconds((model, norm, batch, image), n)
    if not math.isnan(t):
        return t, how
    per_image = {}
    for m, nm, b, im in times.shapes():
        if (m, nm, im) == (model, norm, image):
            tb, _ = times.seconds((m, nm, b, im), n)
            if not math.isnan(tb):
                per_image[b] = tb / b
    if not per_image:
        return math.nan, "not measured"
    bs = sorted(per_image)
    below, above = [b for b in bs if b < batch], [b for b in bs if b > batch]
    if below and above:
        a, b = below[-1], above[0]
        w = (math.log2(batch) - math.log2(a)) / (math.log2(b) - math.log2(a))
        return batch * (per_image[a] + w * (per_image[b] - per_image[a])), f"interpolated from batches {a}, {b}"
    nearest = below[-1] if below else above[0]
    return batch * per_image[nearest], f"per-image time of batch {nearest}"


# --------------------------------------------------------------------------- the paper profiles' cost


def _figure_params(figure: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nfstudy.cli import load_figure

    return load_figure(figure), load_figure(figure).PROFILES["paper"]


def fig1_groups(params) -> dict[str, int]:
    """Runs per norm of Fig. 1's series (the fused groups): e.g. {"bn": 3, "none": 3, "nf": 2}."""
    module, _ = _figure_params("fig1")
    return dict(Counter(module.parse_series(s)[0] for s in params.series))


def figure_costs(times: StepTimes, seeds: int = 5) -> list[dict[str, Any]]:
    """Device-hours of the paper profiles of fig1 and agc, one run at a time and fused:
    ``hours = seeds x sum over groups of steps per run x seconds per group step / 3600``
    (one at a time: a group of N costs N x steps x one run's step time). fig1 at its budget
    of epochs (the plateau rule can double it twice: up to 4x), CIFAR-10's 50,000 images."""
    from nfstudy.data import TRAIN_IMAGES

    rows = []
    _, fig1 = _figure_params("fig1")
    steps = fig1.epochs * math.ceil(TRAIN_IMAGES["cifar10"] / fig1.batch_size)
    model = f"resnet{fig1.depth}"
    alone = fused = 0.0
    notes = []
    for norm, n in fig1_groups(fig1).items():
        t1, _ = times.seconds((model, norm, fig1.batch_size, 32), 1)
        tn, hown = times.seconds((model, norm, fig1.batch_size, 32), n)
        alone += n * steps * t1
        fused += steps * tn
        notes.append(f"{norm} x{n}: {1e3 * t1:.1f} ms alone, {1e3 * tn:.1f} ms fused ({hown})")
    rows.append(
        {
            "figure": "fig1",
            "runs_per_seed": sum(fig1_groups(fig1).values()),
            "steps_per_run": steps,
            "seeds": seeds,
            "alone_hours_per_seed": alone / 3600,
            "fused_hours_per_seed": fused / 3600,
            "notes": "; ".join(notes),
        }
    )
    _, agc = _figure_params("agc")
    model = f"resnet{agc.depth}"
    nf_group = 1 + len(agc.agc_lambdas)  # nf and nf+agc at each threshold
    alone = fused = 0.0
    notes = []
    for batch in agc.batch_sizes:
        steps = agc.epochs * math.ceil(TRAIN_IMAGES["cifar10"] / batch)
        t1, how1 = _interp_batch(times, model, "nf", batch, 1)
        tn, hown = _interp_batch(times, model, "nf", batch, nf_group)
        alone += (1 + nf_group) * steps * t1  # BN at NF's rate (measured: NF only)
        fused += steps * t1 + steps * tn
        notes.append(f"B={batch}: {1e3 * t1:.0f} ms alone ({how1}), {1e3 * tn:.0f} ms fused x{nf_group} ({hown})")
    rows.append(
        {
            "figure": "agc",
            "runs_per_seed": (1 + nf_group) * len(agc.batch_sizes),
            "steps_per_run": sum(agc.epochs * math.ceil(TRAIN_IMAGES["cifar10"] / b) for b in agc.batch_sizes),
            "seeds": seeds,
            "alone_hours_per_seed": alone / 3600,
            "fused_hours_per_seed": fused / 3600,
            "notes": "BN taken at NF's step time; " + "; ".join(notes),
        }
    )
    return rows


def fig1_epochs(
    times: StepTimes, seconds: float, images: int = 60_000, test_images: int = 10_000, norms: list[str] | None = None
) -> tuple[int, str]:
    """Epochs of Fig. 1's paper series, fused (one group per norm, one after another, as
    experiments/fig1.py trains them; ``norms``: only those groups), that a run of ``seconds``
    finishes: ``floor((SAFETY x seconds - STARTUP_S - groups x GROUP_START_S - FINISH_S) /
    epoch_s)`` with ``epoch_s = steps per epoch x sum over groups of its step time x (1 +
    EVAL_SHARE x test images / 10,000)``. 0 when not one epoch fits. Returns (epochs, the
    arithmetic as a sentence)."""
    _, fig1 = _figure_params("fig1")
    model, batch = f"resnet{fig1.depth}", fig1.batch_size
    steps = math.ceil(images / batch)
    groups = {norm: n for norm, n in fig1_groups(fig1).items() if norms is None or norm in norms}
    group_s, parts = 0.0, []
    for norm, n in groups.items():
        t, how = times.seconds((model, norm, batch, 32), n)
        if math.isnan(t):
            raise SystemExit(
                f"no step time for {model} {norm} x{n} at batch {batch}: run bench_train.py --fused --grid fig1 (or gpu) first"
            )
        group_s += t
        parts.append(f"{norm} x{n} {1e3 * t:.1f} ms ({how})")
    epoch_s = steps * group_s * (1 + EVAL_SHARE * test_images / 10_000)
    fixed_s = STARTUP_S + len(groups) * GROUP_START_S + FINISH_S
    usable_s = SAFETY * seconds - fixed_s
    epochs = max(0, math.floor(usable_s / epoch_s)) if epoch_s > 0 else 0
    text = (
        f"fig1 paper series {'+'.join(groups)}, fused, {images} images at batch {batch} ({steps} steps an epoch): group steps "
        f"{', '.join(parts)}; an epoch ~{epoch_s:.1f} s with its test pass; a run of {seconds:g} s: {SAFETY:g} x {seconds:g} s "
        f"less {fixed_s:g} s of start, groups' warm-up and finish = {usable_s:.0f} s -> {epochs} epochs"
        + (
            f" (~{fixed_s + epochs * epoch_s:.0f} s)"
            if epochs
            else f": not one epoch fits (one needs a run of ~{(fixed_s + epoch_s) / SAFETY:.0f} s)"
        )
    )
    return epochs, text


def fig1_plan(times: StepTimes, seconds: float, images: int = 60_000, test_images: int = 10_000) -> tuple[int, list[str] | None, str]:
    """What a fig1 run of ``seconds`` can finish: ``(epochs, series, why)``. All the paper
    profile's series (``series`` None) for as many epochs as fit; when not one epoch of them
    all fits, the groups (norms, in the order the figure trains them) one epoch of which
    fits, taken in that order and skipping any that would not fit, with their series; ``(0,
    None, why)`` when not even one group's epoch fits: then start no run (it would be
    killed at its limit with nothing finished)."""
    epochs, text = fig1_epochs(times, seconds, images, test_images)
    if epochs >= 1:
        return epochs, None, text
    module, fig1 = _figure_params("fig1")
    chosen: list[str] = []
    for norm in fig1_groups(fig1):
        if fig1_epochs(times, seconds, images, test_images, norms=[*chosen, norm])[0] >= 1:
            chosen.append(norm)
    if not chosen:
        return 0, None, f"{text}; not even one group's epoch fits: no run (give it more seconds, FIG1_SECONDS, or set EPOCHS)"
    epochs, subset = fig1_epochs(times, seconds, images, test_images, norms=chosen)
    series = [s for s in fig1.series if module.parse_series(s)[0] in chosen]
    return epochs, series, f"{text}; so a subset: {subset}"


# --------------------------------------------------------------------------- Markdown


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _f(x, digits=2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def machine(records: list[dict]) -> str:
    envs = [r for r in records if r.get("kind") == "env"]
    if not envs:
        return "(no env record)"
    e = envs[0]
    gpu = f"{e.get('gpu')} ({e.get('gpu_memory_gib')} GiB)" if e.get("gpu") else f"no GPU ({e.get('cpu')}, {e.get('cpu_count')} cores)"
    return (
        f"{gpu}, driver {e.get('driver')}, torch {e.get('torch')}, CUDA {e.get('cuda')}, cuDNN {e.get('cudnn')}, "
        f"Python {e.get('python')}, {e.get('cpu_count')} CPU cores; commit {str(e.get('git_commit'))[:10]}; {e.get('date')}"
    )


def _variant_key(r: dict) -> tuple:
    return (r.get("bench"), r.get("label"), r.get("model"), r.get("norm"), r.get("batch"), r.get("n"), r.get("variant"))


def markdown(records: list[dict], summary: dict | None = None, seeds: int = 5) -> str:
    out = [f"Machine: {machine(records)}"]
    if summary:
        rows = [
            [
                s["name"],
                s["status"],
                _f(s["seconds"], 1),
                _f(float(s["budget_s"]), 0),
                json.dumps(s.get("numbers") or {}) if s["status"] == "ok" else s.get("error"),
            ]
            for s in summary.get("steps", [])
        ]
        out += [
            f"\n### make gpu-check: {'all ok' if summary.get('ok') else 'NOT ok'} in {summary.get('seconds')} s "
            f"({summary.get('jobs', 1)} steps at a time)\n",
            _table(["step", "status", "s", "budget s", "numbers / error"], rows),
        ]
    variants = _kind(records, "bench_train", "variant")
    if variants:
        eager = {(r["model"], r["norm"], r["batch"]): r["ms_per_step"] for r in variants if r["variant"] == "eager fp32"}
        rows = []
        for r in variants:
            base = eager.get((r["model"], r["norm"], r["batch"]))
            speedup = f"{base / r['ms_per_step']:.2f}x" if base else "n/a"
            extra = f" (compile {r['compile_s']:.0f} s)" if r.get("compile_s") is not None else ""
            rows.append(
                [
                    r["label"],
                    r["model"],
                    r["norm"],
                    r["batch"],
                    r["variant"] + extra,
                    _f(r["ms_per_step"]),
                    _f(r["steps_per_s"], 1),
                    speedup,
                ]
            )
        out += [
            "\n### One run's training step (N = 1)\n",
            _table(["shape", "model", "norm", "batch", "variant", "ms/step", "steps/s", "vs eager fp32"], rows),
        ]
    fused = _kind(records, "bench_train", "fused")
    if fused:
        rows = [
            [
                r["label"],
                r["model"],
                r["norm"],
                r["batch"],
                r["n"],
                _f(r["alone_steps_per_s"], 2),
                _f(r["fused_steps_per_s"], 2),
                f"**{r['ratio']:.2f}x** ({', '.join(f'{x:.2f}' for x in r.get('ratios', []))})",
            ]
            for r in fused
        ]
        out += [
            "\n### Fused N runs against the same runs one at a time (steps/s summed over runs)\n",
            _table(["shape", "model", "norm", "batch", "N", "alone steps/s", "fused steps/s", "fused / alone (rounds)"], rows),
        ]
    engine = _kind(records, "bench_train", "engine")
    if engine:
        rows = []
        for r in engine:
            rounds = [x for x in _kind(records, "bench_train", "engine_round") if x["model"] == r["model"]]
            base = statistics.median(x["baseline_images_per_s"] for x in rounds) if rounds else math.nan
            ours = statistics.median(x["engine_images_per_s"] for x in rounds) if rounds else math.nan
            rows.append(
                [
                    r["model"],
                    r["batch"],
                    r["images"],
                    _f(base, 0),
                    _f(ours, 0),
                    f"**{r['ratio']:.2f}x** ({', '.join(f'{x:.2f}' for x in r['ratios'])})",
                ]
            )
        out += [
            "\n### Engine against the reproduction's training loop\n",
            _table(["model", "batch", "images", "baseline img/s", "engine img/s", "engine / baseline (rounds)"], rows),
        ]
    landscape = _kind(records, "bench_landscape", "landscape")
    if landscape:
        rows = [
            [
                r["series"],
                f"ResNet-{r['depth']}",
                r["batch"],
                r["step_sizes"],
                r["chunk"],
                _f(r["baseline_s"], 3),
                _f(r["ours_s"], 3),
                f"**{r['ratio']:.2f}x**",
                _f(r["bound"]),
                f"{r['max_rel_diff']:.1e} on {r['compared']}",
            ]
            for r in landscape
        ]
        out += [
            "\n### Landscape probe against the reproduction's save/step/restore (wall time, median of rounds)\n",
            _table(
                ["series", "network", "batch", "step sizes", "chunk", "baseline s", "ours s", "ratio", "bound (no vmap)", "agreement"], rows
            ),
        ]
    agc = _kind(records, "bench_clip", "agc")
    if agc:
        rows = []
        for r in agc:
            w = r["wall_ms"]
            rows.append(
                [
                    r["case"],
                    r["tensors"],
                    _f(w["fast"], 3),
                    f"**{w['agc'] / w['fast']:.2f}x**",
                    f"**{w['timm'] / w['fast']:.2f}x**",
                    f"{w['floor'] / w['fast']:.2f}x",
                ]
            )
        out += [
            "\n### AGC: the vectorised path (fast) against the definition (agc) and timm (wall time, median)\n",
            _table(["gradients", "tensors", "fast ms", "agc / fast", "timm / fast", "floor / fast"], rows),
        ]
        shares = _kind(records, "bench_clip", "agc_step_share")
        if shares:
            rows = [
                [r["clip"], f"ResNet-{r['depth']} (NF)", r["batch"], _f(r["step_ms"]), _f(r["clip_ms"], 3), f"{100 * r['share']:.2f}%"]
                for r in shares
            ]
            out += ["\n", _table(["clip", "network", "batch", "step ms", "clip ms", "share of the step"], rows)]
    times = StepTimes(records)
    if times.shapes():
        try:
            costs = figure_costs(times, seeds)
        except Exception as error:  # a partial run: say what is missing rather than fail the tables
            costs = []
            out.append(f"\n(paper profiles' cost not computed: {type(error).__name__}: {error})")
        if costs:
            rows = [
                [
                    c["figure"],
                    c["runs_per_seed"],
                    f"{c['steps_per_run']:,}",
                    _f(c["alone_hours_per_seed"]),
                    _f(c["fused_hours_per_seed"]),
                    _f(c["alone_hours_per_seed"] * seeds, 1),
                    _f(c["fused_hours_per_seed"] * seeds, 1),
                    c["notes"],
                ]
                for c in costs
            ]
            out += [
                f"\n### Paper profiles' cost on this device (hours; {seeds} seeds = the gallery)\n",
                _table(
                    [
                        "figure",
                        "runs per seed",
                        "steps per run",
                        "1 seed, one at a time",
                        "1 seed, fused",
                        f"{seeds} seeds, one at a time",
                        f"{seeds} seeds, fused",
                        "step times",
                    ],
                    rows,
                ),
            ]
    problems = [r for r in records if r.get("kind") in ("error", "skipped")]
    ended = {_variant_key(r) for r in records if r.get("kind") in ("variant", "error", "skipped")}
    for r in records:  # a variant that started and never ended: its process was stopped (at its time limit)
        if r.get("kind") == "started" and _variant_key(r) not in ended:
            problems.append({**r, "kind": "unfinished", "reason": "started, never ended: stopped at its time limit?"})
    if problems:
        rows = [
            [
                r["bench"],
                r["kind"],
                r.get("label", ""),
                r.get("norm", ""),
                r.get("batch", ""),
                r.get("n", ""),
                r.get("variant", ""),
                r.get("error") or r.get("reason"),
            ]
            for r in problems
        ]
        out += ["\n### Not measured\n", _table(["bench", "kind", "shape", "norm", "batch", "N", "variant", "why"], rows)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", nargs="+", help="the benchmarks' --jsonl files")
    parser.add_argument("--summary", help="make gpu-check's summary.json: its steps as a table")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the cost table (default 5)")
    parser.add_argument(
        "--fig1-epochs",
        type=float,
        metavar="SECONDS",
        help="print EPOCHS=<E> (0: none fits), and SERIES=[...] when not all of fig1's series fit an epoch: what a run of SECONDS finishes",
    )
    parser.add_argument("--fig1-images", type=int, default=60_000, help="training images of fig1's data set (default 60000, Fashion-MNIST)")
    parser.add_argument("--fig1-test-images", type=int, default=10_000, help="test images of fig1's data set (default 10000)")
    args = parser.parse_args(argv)
    records = read_records(args.jsonl)
    if args.fig1_epochs:
        epochs, series, text = fig1_plan(StepTimes(records), args.fig1_epochs, args.fig1_images, args.fig1_test_images)
        print(text, file=sys.stderr)
        print(f"EPOCHS={epochs}")
        if series:
            print(f"SERIES={series!r}")
        return 0
    summary = json.loads(Path(args.summary).read_text()) if args.summary and Path(args.summary).is_file() else None
    sys.stdout.write(markdown(records, summary, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
