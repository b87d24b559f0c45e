"""scripts/checkpoint_gradient.py on a real (tiny) run's checkpoint, and its one-line refusal of a non-run."""

import importlib.util
from pathlib import Path

import torch

from grokfast_train.config import Config, resolve
from grokfast_train.data import load_task
from grokfast_train.models import build_model
from grokfast_train.train import Run

_spec = importlib.util.spec_from_file_location("checkpoint_gradient",
                                               Path(__file__).parents[1] / "scripts" / "checkpoint_gradient.py")
cg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cg)


def test_the_loss_margins_and_gradient_of_a_checkpoint(tmp_path):
    cfg = resolve(Config(dataset="modular", p=13, hidden=16, heads=2, steps=300, eval_every=100, quiet=True,
                         out=str(tmp_path / "run")))
    assert Run(cfg, log=lambda _: None).fit() is not None
    m = cg.measure(tmp_path / "run", examples=30)
    # independently: the checkpoint's model, its logits on the same examples, margins by sorting
    task = load_task(cfg, log=lambda _: None)
    model = build_model(cfg, task)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"])
    x, y = task.train_x[:30], task.train_y[:30]
    with torch.no_grad():
        logits = model(x, None if task.train_mask is None else task.train_mask[:30])
    top2 = logits.topk(2, dim=1).values
    label = logits.gather(1, y[:, None]).squeeze(1)
    margins = torch.where(label == top2[:, 0], label - top2[:, 1], label - top2[:, 0])
    assert m["examples"] == 30 and m["step"] == 300
    assert abs(m["loss"] - torch.nn.functional.cross_entropy(logits, y).item()) < 1e-5
    assert abs(m["margin_min"] - margins.min().item()) < 1e-4
    assert abs(m["margin_median"] - margins.median().item()) < 1e-4 and margins.median() > 0  # mostly fitted
    assert m["grad_norm"] > 0 and abs(m["grad_norm"] - m["grad_rms"] * sum(p.numel() for p in model.parameters()) ** 0.5) < 1e-6 * m["grad_norm"]


def test_a_directory_without_a_run_gets_one_line_and_exit_2(tmp_path, capsys):
    assert cg.main([str(tmp_path)]) == 2
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "no checkpoint.pt and config.json" in out
