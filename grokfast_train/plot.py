"""Plot runs: train/test accuracy and weight norm against step, one colour per run.

    python -m grokfast_train.plot RUN_DIR [RUN_DIR ...] --out curves.png

Needs matplotlib (``pip install 'grokfast-train[plot]'``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from .errors import OneLineParser, RunError, UsageError, one_line_errors

PROG = "python -m grokfast_train.plot"


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise UsageError(f"{run_dir} has no metrics.jsonl; give a run directory written by grokfast-train")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON lines ({e})") from None


def label(run_dir: Path) -> str:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        return f"{run_dir.name} (n={summary['train_size']:,})"
    except (OSError, ValueError, KeyError):
        return run_dir.name


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(run_dirs: list[Path], out: Path) -> None:
    plt = pyplot()
    if plt is None:
        raise UsageError("plotting needs matplotlib: pip install 'grokfast-train[plot]'")
    fig, (acc_ax, norm_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, run_dir in enumerate(run_dirs):
        rows = read_metrics(run_dir)
        steps = [r["step"] for r in rows]
        colour = f"C{i % 10}"
        acc_ax.plot(steps, [r["train_acc"] for r in rows], "--", color=colour, alpha=0.7)
        acc_ax.plot(steps, [r["test_acc"] for r in rows], "-", color=colour, label=label(run_dir))
        norm_ax.plot(steps, [r["weight_norm"] for r in rows], "-", color=colour)
    acc_ax.set(xscale="log", xlabel="step", ylabel="accuracy", ylim=(0, 1.02),
               title="train (dashed) and test (solid) accuracy")
    acc_ax.legend(fontsize=8)
    norm_ax.set(xscale="log", xlabel="step", ylabel="L2 norm of all weights", title="weight norm")
    for ax in (acc_ax, norm_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out)



def _save(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")  # long tick labels and colour-bar titles stay inside
    pyplot().close(fig)  # a report draws many figures in one process


# -- sweep figures (grokfast-train report) ----------------------------------------------------------
# ``runs`` below are the report's analysed runs: objects with train_size, seed, steps, train_acc,
# test_acc, smoothed (test accuracy), weight_norm (arrays over evaluations) and to_threshold.

def _size_colours(sizes) -> dict:
    from matplotlib import colormaps

    sizes = sorted(set(sizes))
    cmap = colormaps["viridis"]
    return {s: cmap(0.9 * i / max(len(sizes) - 1, 1)) for i, s in enumerate(sizes)}


def _per_size_lines(ax, runs, key: str, colours: dict, style: str = "-", label: bool = True) -> None:
    """One colour per data size; seeds of a size share it, the legend names the size once."""
    labelled = set()
    for r in sorted(runs, key=lambda r: (r.train_size, r.seed)):
        seeds = sum(1 for o in runs if o.train_size == r.train_size)
        name = None
        if label and r.train_size not in labelled:
            name = f"{r.train_size:,}" + (f" ({seeds} seeds)" if seeds > 1 else "")
            labelled.add(r.train_size)
        ax.plot(r.steps, getattr(r, key), style, color=colours[r.train_size], alpha=0.85, lw=1.2, label=name)


def accuracy_curves(runs, title: str, out: Path) -> None:
    """Train and test accuracy against step, one colour per data size."""
    plt = pyplot()
    colours = _size_colours(r.train_size for r in runs)
    fig, (train_ax, test_ax) = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    _per_size_lines(train_ax, runs, "train_acc", colours, label=False)
    _per_size_lines(test_ax, runs, "test_acc", colours)
    train_ax.set(title="train accuracy", ylabel="accuracy (fraction correct)")
    test_ax.set(title="test accuracy (raw)")
    for ax in (train_ax, test_ax):
        ax.set(xscale="log", xlabel="training step (log scale)", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    test_ax.legend(title="training examples", fontsize=8, title_fontsize=8)
    fig.suptitle(f"Train and test accuracy per data size — {title}")
    fig.tight_layout()
    _save(fig, out)


def weight_norms(runs, title: str, out: Path) -> None:
    plt = pyplot()
    colours = _size_colours(r.train_size for r in runs)
    fig, ax = plt.subplots(figsize=(7, 4.4))
    _per_size_lines(ax, runs, "weight_norm", colours)
    ax.set(xscale="log", xlabel="training step (log scale)", ylabel="L2 norm of all weights",
           title=f"Weight norm per data size — {title}")
    ax.grid(alpha=0.3)
    ax.legend(title="training examples", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    _save(fig, out)


def steps_to_threshold(runs, thresholds, highest: dict, cds: dict, sigma_steps: float, title: str,
                       out: Path) -> None:
    """The paper's scatter: steps until smoothed test accuracy reaches each threshold, against data
    size, with the line through the highest points and the critical size's estimate and seed spread."""
    plt = pyplot()
    from matplotlib.colors import Normalize

    norm = Normalize(0, 1)
    fig, ax = plt.subplots(figsize=(8, 5))
    xs, ys, cs = [], [], []
    for r in runs:
        for t in thresholds:
            if r.to_threshold[t] is not None:
                xs.append(r.train_size)
                ys.append(r.to_threshold[t])
                cs.append(t)
    points = ax.scatter(xs, ys, c=cs, cmap="viridis", norm=norm, s=22, alpha=0.8, zorder=3)
    sizes = sorted({r.train_size for r in runs})
    never = [s for s in sizes if s not in xs]
    if never:  # the paper draws these at 0 steps; a cross on the axis says "never" instead
        ax.plot(never, [0.0] * len(never), "x", color="grey", ms=9, mew=2, clip_on=False,
                transform=ax.get_xaxis_transform(), label="no seed reached any threshold")
    line = sorted((s, v) for s, v in highest.items() if v is not None)
    if line:
        ax.plot(*zip(*line), "--", color="crimson", lw=1.5, label="highest point per size (mean over the seeds with one)")
    if cds.get("estimate") is not None:
        ax.axvline(cds["estimate"], color="black", lw=1.2, label=f"critical size estimate {cds['estimate']:,}")
    if cds.get("low") is not None:
        high = cds["high"] if cds.get("high") is not None else max(r.train_size for r in runs)
        ax.axvspan(cds["low"], high, color="grey", alpha=0.15,
                   label="seed spread (low–high)" + ("" if cds.get("high") is not None else ", high above grid"))
    fig.colorbar(points, ax=ax, label="test-accuracy threshold")
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes], rotation=45 if len(sizes) > 8 else 0)
    ax.set(xlabel="training examples", ylabel="training steps to reach the threshold",
           title=f"Steps until smoothed test accuracy (σ = {sigma_steps:g} steps) reaches "
                 f"{min(thresholds):g}…{max(thresholds):g}\n{title}; thresholds never reached are not drawn")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # below the axes: it would hide points (or the crosses) inside
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    _save(fig, out)


def size_step_heatmap(runs, sigma_steps: float, title: str, out: Path) -> None:
    """Smoothed test accuracy over (data size x step), mean over seeds, on the longest run's steps."""
    import numpy as np

    plt = pyplot()
    grid = max((r.steps for r in runs), key=len)
    sizes = sorted({r.train_size for r in runs})
    rows = []
    for size in sizes:
        curves = [np.interp(grid, r.steps, r.smoothed, right=np.nan) for r in runs if r.train_size == size]
        with warnings.catch_warnings():  # steps past every seed's last evaluation stay NaN: drawn blank
            warnings.simplefilter("ignore", RuntimeWarning)
            rows.append(np.nanmean(curves, axis=0) if len(curves) > 1 else curves[0])
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.45 * len(sizes) + 2))
    image = ax.imshow(np.array(rows), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                      interpolation="nearest", extent=(grid[0], grid[-1], -0.5, len(sizes) - 0.5))
    ax.set_yticks(range(len(sizes)), [f"{s:,}" for s in sizes])
    fig.colorbar(image, ax=ax, label="test accuracy (smoothed, mean over seeds)")
    ax.set(xlabel="training step", ylabel="training examples",
           title=f"Test accuracy over data size and step (σ = {sigma_steps:g} steps) — {title}")
    fig.tight_layout()
    _save(fig, out)


def model_heatmap(cells: dict, models: list[str], sizes: list[int], size_labels: dict, xlabel: str,
                  out: Path) -> None:
    """Best test accuracy (mean over seeds) over (model x data size); ``cells[(model, size)]``."""
    import numpy as np

    plt = pyplot()
    values = np.array([[cells.get((m, s), np.nan) for s in sizes] for m in models], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.5, 2.5 + 0.9 * len(sizes)), max(3.0, 1.6 + 0.5 * len(models))))
    image = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(sizes)), [size_labels[s] for s in sizes], fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    fig.colorbar(image, ax=ax, label="best test accuracy (mean over seeds)")
    ax.set(xlabel=xlabel, ylabel="model", title="Best test accuracy over model and data size")
    fig.tight_layout()
    _save(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="image to write (default curves.png)")

    def command() -> int:
        args = parser.parse_args(argv)
        plot(args.runs, args.out)
        print(f"wrote {args.out}")
        return 0

    return one_line_errors(PROG, command)


if __name__ == "__main__":
    sys.exit(main())
