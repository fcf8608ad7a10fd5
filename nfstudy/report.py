"""The results report: ``results/README.md``, built from the result files alone.

For every figure and configuration present (each profile's own parameters, and every
other configuration in its own folder, :mod:`nfstudy.identity`) it redraws the cross-seed
figure and claims from the seeds' CSVs (so results copied from another machine report the
same), then writes one Markdown page that renders on any git host: the figure, the claims
table (claim, measured value, threshold, passed, over how many seeds) and the run facts
(dataset, device, seeds, duration, library versions, git commit; for a configuration other
than the profile's own, what differs). Configurations are never mixed: each is its own
section. Figures with no completed run are listed with the command that runs them; broken
runs, and runs whose folder disagrees with their run.json (a copy, a run filed under
another profile or configuration), are skipped with a warning that names them and the fix.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import identity, runs
from .claims import SEED_RULE, across_seeds, claims_table, normalize, score

__all__ = ["aggregate", "build_report", "rederive_claims"]

PROFILE_ORDER = ("paper", "quick")


def _figures():
    """The figure package (the application layer imports it lazily: the library knows no figure)."""
    from .cli import figure_package

    return figure_package()


@dataclass
class ProfileResult:
    """One configuration of a figure: ``config`` its folder's name (the profile's own, or a
    variant ``<profile>+...-<hash>``), ``profile`` that folder's profile."""

    figure: str
    profile: str
    folder: Path
    config: str = ""
    configuration: identity.Configuration | None = None
    completed: list[Path] = field(default_factory=list)
    broken: list[tuple[Path, str]] = field(default_factory=list)
    claims: pd.DataFrame | None = None
    image: Path | None = None
    error: str | None = None


def _order(names: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    names = set(names)
    return [n for n in preferred if n in names] + sorted(names - set(preferred))


def _scan(root: Path, figure: str, config: str) -> ProfileResult:
    folder = root / figure / config
    result = ProfileResult(figure, identity.profile_of(config), folder, config)
    for seed_dir in sorted(folder.glob("seed=*")):
        meta = runs.read_run(seed_dir)
        if runs.is_attempt(seed_dir):  # an unfinished run beside the seed's completed one (if any)
            status = runs.attempt_status(seed_dir)
            result.broken.append(
                (
                    seed_dir,
                    "a run in progress"
                    if status == "running"
                    else f"an unfinished attempt, {status}: kept for inspection; running the seed again resumes it",
                )
            )
        elif meta is None:
            problem = runs.run_problem(seed_dir)
            why = "no readable run.json" if problem == "no run.json" else problem
            result.broken.append((seed_dir, f"{why}: delete the folder or run the seed again"))
        elif meta.get("status") != "completed":
            result.broken.append((seed_dir, f"status {meta.get('status')!r}" + (f": {meta['error']}" if meta.get("error") else "")))
        elif (why := runs.identity_problem(seed_dir, meta)) is not None:
            result.broken.append((seed_dir, why))
        elif not (seed_dir / "claims.csv").is_file():
            result.broken.append((seed_dir, "completed but claims.csv is missing"))
        else:
            result.completed.append(seed_dir)
            if result.configuration is None:
                result.configuration = identity.configuration(meta["figure"], meta["profile"], meta.get("params", {}))
    return result


def configuration_of(folders: Iterable[Path]) -> identity.Configuration | None:
    """The configuration of the runs in ``folders`` (one configuration's seeds), from the
    first one's run.json; None when there is none."""
    for folder in folders:
        meta = runs.read_run(folder)
        if meta is not None:
            return identity.configuration(meta["figure"], meta["profile"], meta.get("params", {}))
    return None


state_configuration = runs.state_configuration  # the per-seed figure (Run.save_figure) and the aggregate state it alike


def aggregate(figure: str, profile: str | None, root: str | os.PathLike | None = None, config=None) -> tuple[Path, pd.DataFrame]:
    """Draw ``<figure>.png`` and write ``claims.csv`` over every completed seed of one
    configuration of a figure (the profile's own, or the one ``config`` names:
    :func:`nfstudy.runs.config_name`), into its folder, from the seeds' CSVs; returns the
    image path and the claims. The figure of another configuration says, under its title,
    what differs from the profile's parameters.

    A seed folder lacking a table (results copied without their large tables, say) does not
    stop it: each table is taken from the seeds that hold it, the plot draws what it can,
    and one line on stderr names each seed and the tables it lacks."""
    import matplotlib.pyplot as plt

    root = Path(root or runs.results_root())
    module = _figures().load(figure)
    name = runs.config_name(figure, profile, config)
    profile = identity.profile_of(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loaders below name each skipped run
        folders = runs.seed_dirs(figure, profile, root, config=name)
    for folder, names in runs.missing_tables(folders, exclude=()).items():
        print(
            f"[nfstudy] {figure} ({name}): {folder.name} lacks {', '.join(names)}: the figure is drawn from the seeds "
            f"that hold {'them' if len(names) > 1 else 'it'}, the claims from each seed's claims.csv (re-run the seed to restore it)",
            file=sys.stderr,
        )
    tables = runs.load_tables(figure, profile, root, missing="skip", config=name)
    per_seed = runs.load_table(figure, "claims", profile, root, missing="skip", config=name)
    folder = root / figure / name
    fig = module.plot(tables)
    state_configuration(fig, configuration_of(folders))
    image = runs.atomic_save_figure(fig, folder / f"{figure}.png")
    plt.close(fig)
    claims = across_seeds(per_seed)
    runs.atomic_write_csv(claims, folder / "claims.csv")
    return image, claims


def rederive_claims(figure: str, profile: str | None, root: str | os.PathLike | None = None, config=None) -> dict[Path, pd.DataFrame]:
    """Recompute every completed seed's ``claims.csv`` of one configuration (as
    :func:`aggregate`) from its stored tables with the
    figure's current ``claims`` (after a change to the claims code), record each changed
    file in its ``run.json`` (checksum, and a note of when and by which commit);
    :func:`aggregate` then redoes the cross-seed claims (``python -m nfstudy claims`` does
    both). Every seed's tables are read and checked before anything is written:
    a table that does not match its run.json refuses the whole command, naming it.
    Returns, per seed folder, the rows whose value or outcome changed (columns ``claim``,
    ``before``, ``after``, ``outcome_before``, ``outcome_after``)."""
    root = Path(root or runs.results_root())
    module = _figures().load(figure)
    name = runs.config_name(figure, profile, config)
    folders = runs.seed_dirs(figure, identity.profile_of(name), root, config=name)
    if not folders:
        raise FileNotFoundError(f"no completed runs of {figure} ({name}) under {root / figure / name}: nothing to re-derive")
    derived = [(folder, claims_table(figure, module.claims(runs.read_tables(folder)))) for folder in folders]
    changes = {}
    for folder, claims in derived:
        try:
            before = normalize(runs.read_table(folder, "claims"))
        except (FileNotFoundError, runs.CorruptResultError):  # rewritten whole, as it is derived
            before = pd.DataFrame(columns=["claim", "value", "outcome"])
        runs.rewrite_table(folder, "claims", claims, f"claims re-derived from the stored tables by `nfstudy claims {figure}`")
        changes[folder] = _claim_changes(before, claims)
    return changes


def _claim_changes(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The claims (by statement) whose value or outcome differs, or that one side lacks."""
    old = before.drop_duplicates("claim").set_index("claim")
    new = after.drop_duplicates("claim").set_index("claim")
    rows = []
    for claim in dict.fromkeys([*new.index, *old.index]):
        a = old.loc[claim] if claim in old.index else None
        b = new.loc[claim] if claim in new.index else None
        values = [float("nan") if x is None else float(x["value"]) for x in (a, b)]
        outcomes = ["absent" if x is None else str(x["outcome"]) for x in (a, b)]
        same_value = values[0] == values[1] or (math.isnan(values[0]) and math.isnan(values[1]))
        if not same_value or outcomes[0] != outcomes[1]:
            rows.append(
                {"claim": claim, "before": values[0], "after": values[1], "outcome_before": outcomes[0], "outcome_after": outcomes[1]}
            )
    return pd.DataFrame(rows, columns=["claim", "before", "after", "outcome_before", "outcome_after"])


def _aggregate(result: ProfileResult, root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # broken runs are reported by the page itself
        result.image, result.claims = aggregate(result.figure, result.profile, root, config=result.config)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    x = float(x)
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4g}"


_VERDICT = {"passed": "✅ yes", "failed": "❌ no", "not evaluable": "➖ not evaluable"}
_KIND = {"paper": "", "extension": "(beyond the paper) ", "sanity": "(sanity check, not counted) "}


def _labelled(kind: str, claim: str) -> str:
    """The claim led by its kind's label, once. The figures write the extension label into the
    claim itself ("(beyond the paper) ...", "(beyond the papers) ..."); that text is the claim's
    identity across seeds (claims.csv), so it stays, and the page adds the label only where
    the claim does not already begin with it."""
    label = _KIND.get(kind, "")
    return claim if not label or claim.startswith(label.rstrip(") ")) else label + claim


def _bound(row) -> str:
    if row.comparison == "between":
        return f"{_fmt(row.threshold)} .. {_fmt(row.threshold_high)}"
    return f"{row.comparison} {_fmt(row.threshold)}"


def _claims_markdown(claims: pd.DataFrame) -> list[str]:
    lines = [
        f"A claim holds over seeds when it held in at least {SEED_RULE:.0%} of the seeds that could decide it.",
        "",
        "| claim | measured | threshold | outcome | seeds passed / evaluable / run |",
        "|---|---|---|---|---|",
    ]
    for row in claims.itertuples(index=False):
        spread = f" ± {_fmt(row.value_std)}" if row.n_evaluable > 1 and not pd.isna(row.value_std) else ""
        claim, metric, note = (str(text).replace("|", "\\|") for text in (row.claim, row.metric, row.note))  # | ends a cell
        note = f"<br><sub>{note}</sub>" if note else ""
        lines.append(
            f"| {_labelled(row.kind, claim)}<br><sub>{metric}</sub> | {_fmt(row.value)}{spread} | {_bound(row)} "
            f"| {_VERDICT[row.outcome]}{note} | {row.n_passed}/{row.n_evaluable}/{row.n_seeds} |"
        )
    return lines


def _facts_markdown(result: ProfileResult) -> list[str]:
    metas = [runs.read_run(p) for p in result.completed]
    config = result.configuration
    differs = [] if config is None or config.default else [f"- **configuration** `{config.name}`: {config.describe(full=True)}"]
    seeds = ", ".join(str(m["seed"]) for m in metas)
    # A resumed run's earlier attempts (interrupted, then resumed from checkpoints) count too.
    durations = [(m.get("duration_s") or 0.0) + sum(a.get("duration_s") or 0.0 for a in m.get("earlier_attempts", [])) for m in metas]
    commits = sorted({(m.get("git") or {}).get("commit") or "unknown" for m in metas})
    dirty = any((m.get("git") or {}).get("dirty") for m in metas)
    versions = metas[-1].get("versions", {})
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("python", "torch", "torchvision", "numpy", "pandas"))
    started = min(m.get("started") or "" for m in metas)
    return differs + [
        f"- **dataset** {', '.join(sorted({str(m.get('dataset')) for m in metas}))}; "
        f"**device** {', '.join(sorted({str(m.get('device')) for m in metas}))}",
        f"- **seeds** {seeds}; **duration** {sum(durations):.0f} s in all "
        f"({sum(durations) / len(durations):.0f} s per seed); first run {started}",
        f"- **versions** {shown}",
        f"- **git commit** {', '.join(c[:12] for c in commits)}{' (with uncommitted changes)' if dirty else ''}",
    ]


def _title(figure: str) -> str:
    """The figure module's ``TITLE``; a folder that is no figure is named by itself."""
    return _figures().load(figure).TITLE if figure in _figures().FIGURES else figure


def _configurations(root: Path, figure: str) -> list[str]:
    """The folders of a figure's configurations: each profile's own first, then its variants."""
    folder = root / figure
    names = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []
    profiles = _order({identity.profile_of(n) for n in names}, PROFILE_ORDER)
    return sorted(names, key=lambda n: (profiles.index(identity.profile_of(n)), n != identity.profile_of(n), n))


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return "".join(ch for ch in heading.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


def _section(result: ProfileResult, root: Path) -> list[str]:
    config = result.config or result.profile
    variant = f", configuration `{config}`" if config != result.profile else ""
    lines = [f"### {result.figure} — `{result.profile}` profile{variant}", ""]
    if variant and result.configuration is not None:
        lines += [f"Not the profile's own parameters: {result.configuration.describe()}.", ""]
    if result.error:
        return lines + [f"Could not be redrawn from its files: `{result.error}`", ""]
    lines += [f"![{result.figure} ({config})]({result.image.relative_to(root).as_posix()})", ""]
    lines += _claims_markdown(result.claims) + [""]
    lines += _facts_markdown(result) + [""]
    if result.broken:
        lines += [f"- skipped: {', '.join(f'`{p.name}` ({why})' for p, why in result.broken)}", ""]
    return lines


def build_report(root: str | os.PathLike | None = None, figures_known: Iterable[str] | None = None) -> Path:
    """Write ``<root>/README.md`` (root: the results folder); returns its path."""
    root = Path(root or runs.results_root())
    root.mkdir(parents=True, exist_ok=True)
    order = tuple(_figures().FIGURES)  # the order a reader expects: Bjorck et al.'s figures, then the NF papers'
    known = set(order) if figures_known is None else set(figures_known)
    present = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    overview, sections, missing, broken = [], [], [], []
    for figure in _order(known | present, order):
        results = [_scan(root, figure, config) for config in _configurations(root, figure)]
        broken += [item for r in results for item in r.broken]
        done = [r for r in results if r.completed]
        if not done:
            if figure in known:  # another folder (scratch, a backup) is not offered a make target
                missing.append(figure)
            continue
        heading = f"{figure}: {_title(figure)}"
        sections += [f"## {heading}", ""]
        for result in done:
            try:
                _aggregate(result, root)
            except Exception as error:  # a figure that cannot be redrawn is reported, not fatal
                result.error = f"{type(error).__name__}: {error}"
                warnings.warn(f"{figure} ({result.config}): could not redraw from its files: {result.error}", stacklevel=2)
            else:
                passed = "{}/{}".format(*score(result.claims))
                overview.append(f"| [{figure}](#{_anchor(heading)}) | {result.config} | {len(result.completed)} | {passed} |")
            sections += _section(result, root)
    lines = [
        "# nfstudy results",
        "",
        "Built by `make report` from the files under this folder alone: every figure and claims table below",
        "is redrawn from the seeds' CSVs. Profiles: `paper` (the paper's model and data), `quick` (small, offline);",
        "a run with other parameters is its own configuration, `<profile>+<what differs>-<hash>`, never mixed with the profile's.",
        "",
    ]
    if overview:
        lines += ["| figure | configuration | seeds | paper claims passed / evaluable |", "|---|---|---|---|", *overview, ""]
    lines += sections
    if missing:
        lines += ["## Not yet run", ""]
        lines += [f"- **{f}** ({_title(f)}): `make {f} PROFILE=quick` (small, offline) or `make {f}` (paper scale)" for f in missing]
        lines += [""]
    if broken:
        lines += ["## Skipped runs", ""]
        lines += [f"- `{p.relative_to(root).as_posix()}`: {why}" for p, why in broken]
        lines += [""]
        for path, why in broken:
            warnings.warn(f"skipping {path}: {why}", stacklevel=2)
    return runs.atomic_write(root / "README.md", "\n".join(lines).rstrip() + "\n")
