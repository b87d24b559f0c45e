"""A run's checkpoint on its own training examples: the loss, each example's margin and the gradient's size.

Where a run's logged training loss reaches exactly 0 (fp32 softmax saturated: what Prieto et al. 2025 call
softmax collapse), this says whether any learning signal is left: the whole-model gradient norm on the first
``--examples`` training examples, against AdamW's eps (an element's update is ~lr x g / (|g| + eps)).

    python scripts/checkpoint_gradient.py RUN_DIR [--examples 512]

Prints one line: the checkpoint's step, the mean loss, the smallest and median margin (the label's logit minus
the largest other), the gradient's norm and its root-mean-square per parameter element. CPU, one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grokfast_train.config import Config  # noqa: E402
from grokfast_train.data import load_task  # noqa: E402
from grokfast_train.models import build_model  # noqa: E402


def measure(run_dir: Path, examples: int = 512) -> dict:
    raw = json.loads((run_dir / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields})
    cfg = dataclasses.replace(cfg, device="cpu", backend="torch")
    task = load_task(cfg, log=lambda _: None)
    model = build_model(cfg, task)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")
    model.load_state_dict(state["model"])
    x, y = task.train_x[:examples], task.train_y[:examples]
    mask = None if task.train_mask is None else task.train_mask[:examples]
    logits = model(x, mask).float()
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    margin = logits.gather(1, y[:, None]).squeeze(1) - other
    sq = sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None)
    n = sum(p.numel() for p in model.parameters())
    return dict(step=state["step"], loss=loss.item(), margin_min=margin.min().item(), margin_median=margin.median().item(),
                grad_norm=sq ** 0.5, grad_rms=(sq / n) ** 0.5, examples=int(x.shape[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--examples", type=int, default=512)
    args = parser.parse_args(argv)
    if not (args.run_dir / "checkpoint.pt").is_file() or not (args.run_dir / "config.json").is_file():
        print(f"checkpoint_gradient: {args.run_dir} has no checkpoint.pt and config.json (a run directory?)")
        return 2
    torch.set_num_threads(1)
    m = measure(args.run_dir, args.examples)
    print(f"step {m['step']:,}: loss {m['loss']:.4g} on {m['examples']} training examples; margin min "
          f"{m['margin_min']:.3g}, median {m['margin_median']:.3g}; gradient norm {m['grad_norm']:.3g}, "
          f"rms per element {m['grad_rms']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
