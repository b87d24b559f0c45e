"""Plot runs: train/test accuracy and weight norm against step, one colour per run.

    python -m grokfast_train.plot RUN_DIR [RUN_DIR ...] --out curves.png

Needs matplotlib (``pip install 'grokfast-train[plot]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import GrokfastError, RunError, UsageError


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


def plot(run_dirs: list[Path], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'grokfast-train[plot]'") from None
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grokfast_train.plot", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="image to write (default curves.png)")
    args = parser.parse_args(argv)
    try:
        plot(args.runs, args.out)
    except GrokfastError as e:
        print(f"grokfast_train.plot: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"grokfast_train.plot: error: cannot write {args.out} ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
