"""``grokfast-train report DIR``: landmarks, regimes and the critical data size of a run or a sweep.

DIR is one run directory (it holds config.json) or a sweep directory (its immediate subdirectories
are run directories). Only what runs write is read: config.json, metrics.jsonl, summary.json.
Runs without summary.json are still running or were interrupted: they are counted and named, and
the report covers the finished ones. Written into DIR (or --out): report.md, report.json, runs.csv
and figures/*.png (the figures need matplotlib: ``pip install 'grokfast-train[plot]'``).

``grokfast-train report DIR DIR ... --out OUT`` reads several sweeps (or runs) into one report: each
run named ``<its directory>/<run>``, grouped, as within one sweep, by the settings that differ.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import analysis as an
from .config import legacy_value
from .errors import OneLineParser, RunError, UsageError, one_line_errors

PROG = "grokfast-train report"
CONFIG, METRICS, SUMMARY, SWEEP = "config.json", "metrics.jsonl", "summary.json", "sweep.json"
FIGURES = "figures"
# Settings that do not make a different experiment: they never split a sweep's runs into groups.
# Every setting a resume may change (rundir.RESUMABLE, less steps: the budget) is one; a test keeps
# the two in step (rundir is not imported here: it brings torch, which a report does not need).
NOT_EXPERIMENT = {"frac", "train_size", "seed", "out", "resume", "force", "quiet", "device", "backend",
                  "eval_batch_size", "checkpoint_every", "cache_dir", "data_dir", "log", "cuda_graph",
                  "stop_after_generalising"}


@dataclasses.dataclass(frozen=True)
class Options:
    sigma: float = an.PAPER_SIGMA_STEPS
    window: int | None = None
    thresholds: tuple[float, ...] = an.THRESHOLDS
    rule: an.RegimeRule = an.RegimeRule()


@dataclasses.dataclass
class Run:
    """One finished run, read and analysed (arrays cut to the analysis window)."""

    name: str
    config: dict
    summary: dict
    steps: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    weight_norm: np.ndarray
    smoothed: np.ndarray | None = None  # the rest is filled in by analyse()
    to_threshold: dict | None = None
    marks: an.Landmarks | None = None
    regime: str = ""
    model: str = ""

    @property
    def train_size(self) -> int:
        return int(self.summary["train_size"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


# -- reading ----------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path} ({e})") from None
    if not isinstance(value, dict):
        raise RunError(f"{path} is not a JSON object")
    return value


def _read_metrics(path: Path) -> dict[str, np.ndarray]:
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        columns = {k: np.array([r[k] for r in rows], dtype=float)
                   for k in ("step", "train_acc", "test_acc", "weight_norm")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"cannot read {path} ({e!r})") from None
    if not rows:
        raise RunError(f"{path} has no evaluations")
    return columns


def find_runs(root: Path) -> tuple[list[Path], bool, int]:
    """Run directories under root, whether root is a single run, and how many runs the sweep expects."""
    if not root.exists():
        raise UsageError(f"{root} does not exist; give a run directory or a sweep directory")
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory; give a run directory or a sweep directory")
    if (root / CONFIG).exists():
        return [root], True, 1
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and (d / CONFIG).exists())
    if not dirs:
        raise UsageError(f"{root} holds no runs: neither it nor its subdirectories have a {CONFIG}")
    expected = len(dirs)
    try:  # optional: runs of the grid not started yet have no directory, but the sweep file lists them
        planned = json.loads((root / SWEEP).read_text()).get("runs")
        expected = max(expected, len(planned)) if isinstance(planned, (list, dict)) else expected
    except (OSError, ValueError, AttributeError):
        pass
    return dirs, False, expected


def load_run(run_dir: Path, name: str, window: int | None) -> Run:
    metrics = _read_metrics(run_dir / METRICS)
    keep = an.within(metrics["step"], window)
    if not keep.any():
        raise UsageError(f"--window {window} ends before the first evaluation of {run_dir} "
                         f"(step {int(metrics['step'][0])}); give a larger --window")
    config, summary = _read_json(run_dir / CONFIG), _read_json(run_dir / SUMMARY)
    if "train_size" not in summary:
        raise RunError(f"{run_dir / SUMMARY} has no train_size")
    return Run(name, config, summary, metrics["step"][keep].astype(int), metrics["train_acc"][keep],
               metrics["test_acc"][keep], metrics["weight_norm"][keep])


# -- analysis ---------------------------------------------------------------------------------------
def analyse(run: Run, opts: Options) -> None:
    cfg = run.config
    run.marks = an.landmarks(run.steps, run.train_acc, run.test_acc,
                             cfg.get("mem_threshold", 0.99), cfg.get("gen_threshold", 0.95))
    run.regime = an.classify(run.marks, int(cfg.get("eval_every") or 1), opts.rule)
    run.smoothed = an.smooth(run.steps, run.test_acc, opts.sigma)
    run.to_threshold = an.steps_to_thresholds(run.steps, run.smoothed, opts.thresholds)


def model_keys(runs: list[Run], window: int | None) -> None:
    """Name each run's group: hidden and layers, plus any other setting that varies within them."""
    def setting(r: Run, field: str):
        # a run written before the setting existed ran with its legacy value (config.legacy_value)
        value = r.config[field] if field in r.config else legacy_value(field)
        if field == "steps" and window is not None and isinstance(value, int):
            return min(value, window)  # the budget analysed: runs cut to one window compare
        return value

    keys = {r.name: f"hidden={r.config.get('hidden')},layers={r.config.get('n_layers')}" for r in runs}
    fields = sorted({k for r in runs for k in r.config} - NOT_EXPERIMENT - {"hidden", "n_layers"})
    for field in fields:  # a setting that is a function of the key so far (ffn = 4 x hidden) adds nothing
        seen = defaultdict(set)
        for r in runs:
            seen[keys[r.name]].add(json.dumps(setting(r, field)))
        if any(len(values) > 1 for values in seen.values()):
            for r in runs:
                keys[r.name] += f",{field}={_short(setting(r, field))}"
    for r in runs:
        r.model = keys[r.name]


def _short(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def run_row(r: Run) -> dict:
    return {
        "run": r.name, "model": r.model, "train_size": r.train_size, "frac": r.config.get("frac"),
        "hidden": r.config.get("hidden"), "layers": r.config.get("n_layers"), "seed": r.seed,
        "regime": r.regime, "memorization_step": r.marks.memorization_step,
        "generalization_step": r.marks.generalization_step, "delay": r.marks.delay,
        "best_test_acc": float(r.test_acc.max()), "final_test_acc": float(r.test_acc[-1]),
        "final_train_acc": float(r.train_acc[-1]), "budget_steps": int(r.steps[-1]),
        "highest_point": an.highest_point(r.to_threshold),
        "steps_to_threshold": {f"{t:g}": s for t, s in r.to_threshold.items()},
    }


def group_analysis(runs: list[Run], opts: Options) -> tuple[dict, dict]:
    """Per model: the critical data size (with its seed spread) and the steps-to-threshold summary."""
    cds, thresholds = {}, {}
    for model in sorted({r.model for r in runs}, key=_model_order):
        group = [r for r in runs if r.model == model]
        cds[model] = an.critical_data_size((r.train_size, r.seed, r.marks.generalization_step) for r in group)
        by_size = defaultdict(list)
        for r in group:
            by_size[r.train_size].append(r)
        comparable = an.sizes_every_seed_ran((r.train_size, r.seed) for r in group)  # peaks: an.PEAK_RULE
        thresholds[model] = {
            "per_size": [{"train_size": size,
                          "seeds": len(rs),
                          "mean_steps": {f"{t:g}": an.mean_or_none(r.to_threshold[t] for r in rs) for t in opts.thresholds},
                          "reached": {f"{t:g}": sum(r.to_threshold[t] is not None for r in rs) for t in opts.thresholds},
                          "highest_point": an.mean_or_none(an.highest_point(r.to_threshold) for r in rs)}
                         for size, rs in sorted(by_size.items())],
            "threshold_peaks": {f"{t:g}": size for t, size in an.threshold_peaks(
                {size: [r.to_threshold for r in rs] for size, rs in by_size.items() if size in comparable},
                opts.thresholds).items()},
        }
    return cds, thresholds


def _model_order(model: str) -> tuple:
    numbers = [float(n) for n in re.findall(r"=(-?\d+(?:\.\d+)?)", model)]
    return (numbers, model)


def stopped_early(runs: list[Run]) -> list[str]:
    stopped = [r.name for r in runs if r.summary.get("stopped_early_at") is not None]
    if not stopped:
        return []
    names = ", ".join(stopped[:4]) + (" ..." if len(stopped) > 4 else "")
    who, its = ("1 run", "its") if len(stopped) == 1 else (f"{len(stopped)} runs", "their")
    return [f"{who} stopped early (--stop-after-generalising: {names}): {its} curves end at the stop, so a threshold "
            f"not reached by then reads never, and {its} best and final accuracies are those at the stop"]


def duplicates(runs: list[Run]) -> list[str]:
    seen = defaultdict(list)
    for r in runs:
        seen[(r.model, r.train_size, r.seed)].append(r.name)
    return [f"{model}, {size:,} examples, seed {seed}: several runs ({', '.join(names)}); the per-size "
            f"tables count each, the per-seed critical size uses the last"
            for (model, size, seed), names in seen.items() if len(names) > 1]


# -- writing ----------------------------------------------------------------------------------------
CSV_COLUMNS = ("run", "model", "train_size", "frac", "hidden", "layers", "seed", "regime", "memorization_step",
               "generalization_step", "delay", "best_test_acc", "final_test_acc", "final_train_acc",
               "budget_steps", "highest_point")


def write_csv(path: Path, rows: list[dict], thresholds) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*CSV_COLUMNS, *(f"steps_to_{t:g}" for t in thresholds)])
        for row in rows:
            cells = [row[c] for c in CSV_COLUMNS] + [row["steps_to_threshold"][f"{t:g}"] for t in thresholds]
            out.writerow(["" if c is None else c for c in cells])


def _count(v, none: str = "–") -> str:
    """A step or size with thousands separators (means rounded); ``none`` for None."""
    return none if v is None else f"{v:,.0f}"


def _acc(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def settings_text(opts: Options) -> list[str]:
    window = "the whole run" if opts.window is None else f"the first {opts.window:,} steps (--window)"
    return [
        f"- **Budget**: {window}; evaluations after it are ignored everywhere below.",
        "- **Landmarks**: memorised = first evaluation with train accuracy ≥ the run's `mem_threshold`; "
        "generalised = first evaluation with test accuracy ≥ its `gen_threshold` (raw curves, as in summary.json).",
        f"- **Regimes**: {opts.rule.describe()} (--surplus-delay, --surplus-floor).",
        f"- **Steps to threshold**: test accuracy smoothed by a Gaussian with σ = {opts.sigma:g} steps "
        "(scipy's reflect edges, as the paper); the first evaluated step where the smoothed curve is ≥ t, for t in "
        f"{', '.join(f'{t:g}' for t in opts.thresholds)}; *never* when not reached in the budget (the paper writes 0). "
        "The highest point of a run is its largest step count over the thresholds it reached; a threshold's "
        "peak size is taken over the sizes that every seed of the model ran.",
    ]


def run_table(rows: list[dict]) -> str:
    return _table(
        ["run", "model", "train size", "frac", "seed", "memorised", "generalised", "delay", "regime",
         "best test acc", "final test acc"],
        [[r["run"], r["model"], f"{r['train_size']:,}", ("–" if r["frac"] is None else f"{r['frac']:g}"), r["seed"], _count(r["memorization_step"], "never"),
          _count(r["generalization_step"], "never"), _count(r["delay"]), r["regime"], _acc(r["best_test_acc"]),
          _acc(r["final_test_acc"])] for r in rows])


def cds_section(cds: dict) -> list[str]:
    rows = []
    for model, c in cds.items():
        seeds = ", ".join(f"{s['seed']}: {_count(s['critical_size'], 'above grid')}"
                          for s in c["per_seed"])
        peak = ("–" if c["peak_size"] is None else
                f"{c['peak_size']:,} (mean step {c['peak_mean_generalization_step']:,.0f})")
        rows.append([model, _count(c["estimate"]), _count(c["low"]),
                     "above grid" if c["high"] is None and c["low"] is not None else _count(c["high"]),
                     c["seeds"], "yes" if c["seeds_disagree"] else "no", seeds, peak])
    lines = ["## Critical data size", "", "Rules: see above.", "",
             _table(["model", "estimate", "low", "high", "seeds", "seeds disagree", "per seed",
                     "steps-to-generalise peak"], rows)]
    notes = [f"- {model}, seed {s['seed']}: {s['note']}" for model, c in cds.items() for s in c["per_seed"] if s["note"]]
    if notes:
        lines += ["", "Per-seed notes:", "", *notes]
    for model, c in cds.items():
        lines += ["", f"Generalised seeds per size ({model}): " + "; ".join(
            f"{p['train_size']:,}: {p['generalised']}/{p['seeds']}"
            + (f" (mean step {p['mean_generalization_step']:,.0f})" if p["mean_generalization_step"] is not None else "")
            for p in c["per_size"])]
    return lines


def threshold_section(model: str, summary: dict, thresholds) -> list[str]:
    rows = []
    for p in summary["per_size"]:
        cells = [f"{_count(p['mean_steps'][f'{t:g}'], 'never')} ({p['reached'][f'{t:g}']}/{p['seeds']})" for t in thresholds]
        rows.append([f"{p['train_size']:,}", *cells, _count(p["highest_point"], "never")])
    rows.append(["**peak size**", *(_count(summary["threshold_peaks"][f"{t:g}"]) for t in thresholds), ""])
    return [f"### Steps to threshold: {model}", "",
            "Mean over the seeds that reached the threshold (seeds that reached it / seeds).", "",
            _table(["train size", *(f"{t:g}" for t in thresholds), "highest point"], rows)]


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model.replace("=", ""))


def sweep_figures(runs: list[Run], cds: dict, thresholds: dict, opts: Options, fig_dir: Path) -> dict[str, list[Path]]:
    from . import plot

    figures = defaultdict(list)
    for model in cds:
        group = [r for r in runs if r.model == model]
        slug = _slug(model)
        highest = {p["train_size"]: p["highest_point"] for p in thresholds[model]["per_size"]}
        jobs = [("accuracy", lambda out: plot.accuracy_curves(group, model, out)),
                ("steps-to-threshold", lambda out: plot.steps_to_threshold(group, opts.thresholds, highest,
                                                                           cds[model], opts.sigma, model, out)),
                ("heatmap-size-step", lambda out: plot.size_step_heatmap(group, opts.sigma, model, out)),
                ("weight-norm", lambda out: plot.weight_norms(group, model, out))]
        for name, draw in jobs:
            path = fig_dir / f"{slug}-{name}.png"
            draw(path)
            figures[model].append(path)
    if len(cds) > 1:
        cells = defaultdict(list)
        fracs = {}
        for r in runs:
            cells[(r.model, r.train_size)].append(float(r.test_acc.max()))
            fracs[r.train_size] = r.config.get("frac")
        sizes = sorted(fracs)
        labels = {s: f"{s:,}" + (f"\n({fracs[s]:g})" if fracs[s] is not None else "") for s in sizes}
        path = fig_dir / "heatmap-model-size.png"
        xlabel = "training examples" + (" (fraction of the pool)" if any(fracs.values()) else "")
        plot.model_heatmap({k: float(np.mean(v)) for k, v in cells.items()}, list(cds), sizes, labels, xlabel, path)
        figures["all models"].append(path)
    return figures


def run_figures(run: Run, fig_dir: Path) -> dict[str, list[Path]]:
    from . import plot

    paths = [fig_dir / "accuracy.png", fig_dir / "weight-norm.png"]
    plot.accuracy_curves([run], run.name, paths[0])
    plot.weight_norms([run], run.name, paths[1])
    return {run.name: paths}


def _have_matplotlib() -> bool:
    from . import plot

    return plot.pyplot() is not None


# -- the report -------------------------------------------------------------------------------------
def collect(roots: list[Path]) -> tuple[dict[str, Path], bool, int]:
    """The runs of one or several run/sweep directories by name, whether it is one single run, and how
    many runs the sweeps expect. With several, a run's name is prefixed by its directory's: the runs of
    several sweeps (Grokfast on and off, two weight decays, ...) compare in one report, grouped by the
    settings that differ."""
    names = [r.resolve().name for r in roots]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"two of the directories are named {twice}; a combined report names runs by their directory")
    runs: dict[str, Path] = {}
    expected, single = 0, False
    for root, prefix in zip(roots, names):
        dirs, single, n = find_runs(root)
        expected += n
        runs.update({(d.name if len(roots) == 1 else f"{prefix}/{d.name}"): d for d in dirs})
    return runs, single and len(roots) == 1, expected


def build(roots: list[Path], out_dir: Path, opts: Options) -> tuple[dict, str]:
    dirs, single, expected = collect(roots)
    finished = {name: d for name, d in dirs.items() if (d / SUMMARY).exists()}
    unfinished = [name for name in dirs if name not in finished]
    if not finished:
        where = ", ".join(map(str, roots))
        what = f"the run in {where} has not" if single else f"none of the {expected} runs in {where} has"
        raise RunError(f"{what} finished yet (no {SUMMARY}); report reads finished runs")
    runs = [load_run(d, name, opts.window) for name, d in finished.items()]
    for r in runs:
        analyse(r, opts)
    model_keys(runs, opts.window)
    runs.sort(key=lambda r: (_model_order(r.model), r.train_size, r.seed, r.name))
    rows = [run_row(r) for r in runs]
    cds, thresholds = ({}, {}) if single else group_analysis(runs, opts)
    coverage = (f"{len(finished)} of {expected} runs finished; report covers the finished ones"
                + (f" (not finished: {', '.join(unfinished)}"
                   + (f"; {expected - len(dirs)} not started" if expected > len(dirs) else "") + ")"
                   if expected > len(finished) else ""))

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create --out {out_dir} ({e.strerror or e})") from None
    figures: dict[str, list[Path]] = {}
    if _have_matplotlib():
        figures = (run_figures(runs[0], out_dir / FIGURES) if single
                   else sweep_figures(runs, cds, thresholds, opts, out_dir / FIGURES))

    report = {
        "dir": str(roots[0] if len(roots) == 1 else out_dir), "dirs": [str(r) for r in roots],
        "kind": "run" if single else "sweep",
        "finished": len(finished), "total": expected, "unfinished": unfinished, "coverage": coverage,
        "settings": {"sigma_steps": opts.sigma, "window_steps": opts.window, "thresholds": list(opts.thresholds),
                     "surplus_delay_factor": opts.rule.delay_factor, "surplus_floor_evals": opts.rule.floor_evals,
                     "regime_rule": opts.rule.describe(), "cds_rule": an.CDS_RULE, "peak_rule": an.PEAK_RULE},
        "runs": rows,
        "critical_data_size": cds,
        "steps_to_threshold": thresholds,
        "figures": [str(p.relative_to(out_dir)) for ps in figures.values() for p in ps],
        "warnings": duplicates(runs) + stopped_early(runs),
    }
    return report, markdown(report, figures, out_dir, opts, single)


def markdown(report: dict, figures: dict, out_dir: Path, opts: Options, single: bool) -> str:
    title = Path(report["dir"]).resolve().name
    lines = [f"# Report: {title}", "", report["coverage"] + ".", "", "## How it was analysed", "",
             *settings_text(opts)]
    if not single:
        lines[-1:] = lines[-1:] + [f"- **Critical data size**: {an.CDS_RULE}.",
                                   f"- **Steps-to-generalise peak**: {an.PEAK_RULE}."]
    if report["warnings"]:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in report["warnings"])]
    if not single:
        lines += ["", *cds_section(report["critical_data_size"])]
    lines += ["", "## Runs", "", run_table(report["runs"])]
    if single:
        r = report["runs"][0]
        lines += ["", "### Steps to threshold", "", _table(
            [f"{t:g}" for t in opts.thresholds] + ["highest point"],
            [[_count(r["steps_to_threshold"][f"{t:g}"], "never") for t in opts.thresholds] + [_count(r["highest_point"], "never")]])]
    else:
        lines += ["", "## Steps to threshold"]
        for model, summary in report["steps_to_threshold"].items():
            lines += ["", *threshold_section(model, summary, opts.thresholds)]
    lines += ["", "## Figures", ""]
    if not figures:
        lines.append("No figures: they need matplotlib (`pip install 'grokfast-train[plot]'`).")
    for model, paths in figures.items():
        lines += [f"### {model}", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in paths]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write(out_dir: Path, report: dict, md: str, thresholds) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_csv(out_dir / "runs.csv", report["runs"], thresholds)
    (out_dir / "report.md").write_text(md)


# -- command line -----------------------------------------------------------------------------------
def _thresholds(values: list[str]) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for item in values for v in item.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--thresholds takes numbers in (0, 1], e.g. 0.1,0.5,0.9; got {' '.join(values)}") from None
    if not out or any(not 0 < t <= 1 for t in out):
        raise UsageError(f"--thresholds must be numbers in (0, 1], got {' '.join(values)}")
    return tuple(sorted(set(out)))


def parse(argv: list[str]) -> tuple[list[Path], Path, Options]:
    p = OneLineParser(prog=PROG, description="Landmarks, regimes and the critical data size of a run or a sweep; "
                                        "writes report.md, report.json, runs.csv and figures/ into DIR (or --out).")
    p.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                   help="a run directory or a sweep directory; several (with --out) compare in one report")
    p.add_argument("--out", type=Path, help="where to write the report (default: DIR; required with several)")
    p.add_argument("--sigma", type=float, default=an.PAPER_SIGMA_STEPS, metavar="STEPS",
                   help="Gaussian smoothing of test accuracy, in steps (default 100, the paper's; 0 = none)")
    p.add_argument("--window", type=int, metavar="STEPS",
                   help=f"analyse only the first STEPS steps: the budget for every verdict (the paper's plots: "
                        f"{an.PAPER_WINDOW_STEPS}; default: the whole run)")
    p.add_argument("--thresholds", nargs="+", metavar="T", default=[",".join(f"{t:g}" for t in an.THRESHOLDS)],
                   help="test-accuracy thresholds for steps-to-threshold (default 0.1,0.2,...,0.9)")
    p.add_argument("--surplus-delay", type=float, default=an.RegimeRule.delay_factor, metavar="FACTOR",
                   help="surplus when generalisation lags memorisation by at most this x the memorisation "
                        "step (default 1)")
    p.add_argument("--surplus-floor", type=int, default=an.RegimeRule.floor_evals, metavar="EVALS",
                   help="but never less than this many evaluation intervals (default 2)")
    args = p.parse_args(argv)
    if args.sigma < 0:
        raise UsageError(f"--sigma must be >= 0 steps, got {args.sigma:g}")
    if args.window is not None and args.window <= 0:
        raise UsageError(f"--window must be a positive number of steps, got {args.window}")
    if args.surplus_delay < 0 or args.surplus_floor < 0:
        raise UsageError("--surplus-delay and --surplus-floor must be >= 0")
    opts = Options(args.sigma, args.window, _thresholds(args.thresholds),
                   an.RegimeRule(args.surplus_delay, args.surplus_floor))
    if len(args.dirs) > 1 and args.out is None:
        raise UsageError("a report on several directories needs --out: where to write it")
    return args.dirs, args.out or args.dirs[0], opts


def main(argv: list[str] | None = None) -> int:
    return one_line_errors(PROG, lambda: _report(sys.argv[1:] if argv is None else argv))


def _report(argv: list[str]) -> int:
    roots, out_dir, opts = parse(argv)
    report, md = build(roots, out_dir, opts)
    write(out_dir, report, md, opts.thresholds)
    print(report["coverage"])
    if not report["figures"]:
        print("no figures: they need matplotlib (pip install 'grokfast-train[plot]'); tables written")
    print(f"wrote {out_dir / 'report.md'}, report.json, runs.csv" + (f" and {len(report['figures'])} figures"
                                                                     if report["figures"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
