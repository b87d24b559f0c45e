"""Config values reach the objects that use them: the kind of bug where ``Run`` ignores a field.

Every other trainer test runs the modular preset (init scale 1, the preset's optimiser), so a Run
that dropped ``--init-scale``, ``--init-std``, ``--seed``, ``--lr``, ``--betas``, ``--weight-decay``
or the thresholds would pass them. Here each is set to a value no preset uses and read back from
the model, the optimiser, the batches and the files -- checked against independent computations
where the value is a result (initial weights, metrics rows, the summary).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kernels.init as init_mod
from grokfast_train.cli import config_from_args, main
from grokfast_train.metrics import first_step
from grokfast_train.models import build_model
from grokfast_train.train import Run

SMALL = ["--dataset", "modular", "--p", "23", "--hidden", "32", "--heads", "2", "--batch-size", "64",
         "--frac", "0.5", "--eval-every", "10", "--checkpoint-every", "10", "--quiet", "--device", "cpu"]
STD, ALPHA, SEED = 0.05, 10.0, 3


def _run(tmp_path, *extra, cls=Run):
    cfg = config_from_args([*SMALL, "--out", str(tmp_path), *extra])
    return cls(cfg, log=lambda _: None)


def _modules(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_init_scale_and_std_reach_the_model(tmp_path):
    """--init-scale 10 (the paper's text alpha): LayerNorm weights are exactly 10 at step 0, biases 0,
    and the normal weights have std init_std x alpha (here under the interpreter's Triton init)."""
    run = _run(tmp_path, "--init-scale", str(ALPHA), "--init-std", str(STD), "--steps", "10")
    lns = _modules(run.model, nn.LayerNorm)
    assert lns, "the model has LayerNorms"
    for ln in lns:
        assert torch.equal(ln.weight.detach(), torch.full_like(ln.weight, ALPHA))
        assert torch.count_nonzero(ln.bias) == 0
    drawn = []
    for m in _modules(run.model, (nn.Linear, nn.Embedding)):
        drawn.append(m.weight.detach().flatten())
        if isinstance(m, nn.Linear) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    w = torch.unique(torch.cat(drawn)).double()  # a tied weight once
    n = w.numel()
    assert n > 10_000
    # std within 6 standard errors of std x alpha (about 4 %); alpha or std dropped is 10x or 2.5x off
    assert abs(w.std().item() / (STD * ALPHA) - 1) < 6 / math.sqrt(2 * n)
    assert abs(w.mean().item()) < 6 * STD * ALPHA / math.sqrt(n)


def test_run_init_is_the_reference_init_with_the_configured_values(tmp_path, monkeypatch):
    """What a real CPU run does (no interpreter: kernels.scaled_init_ takes the reference path):
    the model equals an independent scaled_init_reference_(std, alpha, seed) of the same architecture."""
    monkeypatch.setattr(init_mod, "use_triton", lambda *t: False)
    run = _run(tmp_path, "--init-scale", str(ALPHA), "--init-std", str(STD), "--seed", str(SEED), "--steps", "10")
    want = build_model(run.cfg, run.task)
    with torch.no_grad():
        for p in want.parameters():
            p.fill_(float("nan"))  # every parameter must be written by the init
    init_mod.scaled_init_reference_(want, std=STD, alpha=ALPHA, seed=SEED)
    got = dict(run.model.named_parameters())
    assert got.keys() == dict(want.named_parameters()).keys()
    for name, p in want.named_parameters():
        assert torch.equal(got[name].detach(), p.detach()), name


def test_optimiser_and_filter_settings_reach_the_optimiser(tmp_path):
    args = ["--lr", "0.0037", "--betas", "0.8", "0.95", "--weight-decay", "0.3", "--eps", "1e-7",
            "--grokfast-alpha", "0.7", "--grokfast-lamb", "1.5", "--steps", "10"]
    run = _run(tmp_path / "torch", *args)
    (group,) = run.opt.param_groups
    assert isinstance(run.opt, torch.optim.AdamW)
    assert group["lr"] == 0.0037 and tuple(group["betas"]) == (0.8, 0.95)
    assert group["weight_decay"] == 0.3 and group["eps"] == 1e-7
    assert {id(p) for p in group["params"]} == {id(p) for p in run.model.parameters()}
    assert run.grad_filter is not None and run.grad_filter.alpha == 0.7 and run.grad_filter.lamb == 1.5

    fused = _run(tmp_path / "triton", *args, "--backend", "triton")  # FusedAdamW filters itself
    (group,) = fused.opt.param_groups
    assert type(fused.opt).__name__ == "FusedAdamW" and fused.grad_filter is None
    assert group["lr"] == 0.0037 and tuple(group["betas"]) == (0.8, 0.95)
    assert group["weight_decay"] == 0.3 and group["eps"] == 1e-7
    assert group["grokfast_alpha"] == 0.7 and group["grokfast_lamb"] == 1.5
    assert {id(p) for p in group["params"]} == {id(p) for p in fused.model.parameters()}


def test_learning_rate_moves_the_weights_by_lr(tmp_path):
    """Adam's first step moves every weight with a non-zero gradient by lr (1 - lr*wd shrink aside):
    the configured lr, not a preset's, is what the step uses."""
    run = _run(tmp_path, "--lr", "0.0037", "--weight-decay", "0", "--steps", "1")
    before = [p.detach().clone() for p in run.model.parameters()]
    run.train_step()
    step = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(run.model.parameters(), before)])
    moved = step[step > 0]
    assert moved.numel() > 0.5 * step.numel()
    assert moved.median().item() == pytest.approx(0.0037, rel=1e-2)


class _Recorder(Run):
    """Records, step by step, what train_step hands the meter: the batch's logits and labels."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen = []
        loss = self.meter.loss

        def record(logits, labels, backend):
            self.seen.append((self.step + 1, logits.detach().double().clone(), labels.clone()))
            return loss(logits, labels, backend)

        self.meter.loss = record


def test_rows_summary_and_batches_follow_the_config(tmp_path):
    """Batch size, thresholds and every metric of a row, checked against independent computations
    from what the run saw: CE over the interval's recorded logits, CE of the final model over the
    test set, the L2 norm of the final weights, and first crossings of the thresholds given."""
    run = _run(tmp_path, "--batch-size", "48", "--steps", "30", "--mem-threshold", "0.05",
               "--gen-threshold", "0.02", "--eval-batch-size", "10", cls=_Recorder)  # 133 test examples: 13 x 10 + 3
    summary = run.fit()
    assert [(s, lb.shape[0]) for s, _, lb in run.seen] == [(s, 48) for s in range(1, 31)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    for r in rows:
        lo, hi = r["step"] - 10, r["step"]
        logits = torch.cat([lg for s, lg, _ in run.seen if lo < s <= hi])
        labels = torch.cat([lb for s, _, lb in run.seen if lo < s <= hi])
        assert r["train_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
        assert r["train_acc"] == pytest.approx((logits.argmax(-1) == labels).double().mean().item(), abs=1e-9)
    task, model = run.task, run.model.eval()
    assert task.test_x.shape[0] % 10 != 0  # so a loss averaged per eval batch would differ
    with torch.no_grad():
        logits = model(task.test_x, task.test_mask).double()
    assert rows[-1]["test_loss"] == pytest.approx(F.cross_entropy(logits, task.test_y).item(), rel=1e-5)
    assert rows[-1]["test_acc"] == pytest.approx((logits.argmax(-1) == task.test_y).double().mean().item(), abs=1e-9)
    norm = math.sqrt(sum((p.detach().double() ** 2).sum().item() for p in model.parameters()))
    assert rows[-1]["weight_norm"] == pytest.approx(norm, rel=1e-5)
    # 30 steps reach neither preset threshold (0.99, 0.95), but these low ones
    assert summary["memorization_threshold"] == 0.05 and summary["generalization_threshold"] == 0.02
    assert summary["memorization_step"] == first_step(rows, "train_acc", 0.05) is not None
    assert summary["generalization_step"] == first_step(rows, "test_acc", 0.02) is not None
    assert summary["final_step"] == 30 and summary["train_size"] == task.train_x.shape[0]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mem_threshold"] == 0.05 and saved["batch_size"] == 48 and saved["eval_batch_size"] == 10


def test_resume_with_force_is_refused_with_its_message(tmp_path, capsys):
    """--resume continues a run, --force deletes it: together they are a usage error, said in one line."""
    assert main([*SMALL, "--out", str(tmp_path), "--steps", "10"]) == 0
    capsys.readouterr()
    assert main(["--out", str(tmp_path), "--resume", "--force", "--steps", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--force" in err[0] and "give one of them" in err[0], err
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10]
