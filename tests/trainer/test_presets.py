"""The paper-exact presets (issue: modular and text runs as the paper's code trains them).

Each expected value is written out from DESIGN.md's table of the paper's code, not read from
``config.PRESETS``, so a preset that drifts from the paper fails here.
"""

import json

import pytest
import torch

from grokfast_train.cli import config_from_args, main
from grokfast_train.config import Config, resolve
from grokfast_train.errors import UsageError
from grokfast_train.train import Run

QUIET = ["--quiet", "--device", "cpu"]


def test_modular_preset_is_the_papers_full_batch_run():
    cfg = config_from_args(["--dataset", "modular", "--train-size", "1500"])
    assert cfg.batch_size == "full" and cfg.betas == (0.9, 0.98) and cfg.order == "cyclic"
    assert cfg.modular_format == "paper" and (cfg.lr, cfg.weight_decay, cfg.init_scale) == (1e-3, 1.0, 1.0)
    assert (cfg.n_layers, cfg.hidden, cfg.heads, cfg.steps) == (1, 128, 4, 100_000)
    assert cfg.eval_every <= 10  # fine enough for the paper's smoothing, sigma = 100 steps
    assert cfg.checkpoint_every % cfg.eval_every == 0 and cfg.checkpoint_every >= 1000
    # the test set (25 % of 113² pairs) in one evaluation chunk; the paper's IMDB eval batch for text
    assert cfg.eval_batch_size >= 3193 and config_from_args(["--dataset", "imdb"]).eval_batch_size == 1024
    assert config_from_args(["--dataset", "modular", "--eval-batch-size", "100"]).eval_batch_size == 100


def test_text_preset_keeps_the_ffn_and_heads_as_hidden_varies():
    for hidden in (16, 48, 256):
        cfg = config_from_args(["--dataset", "imdb", "--hidden", str(hidden)])
        assert (cfg.ffn, cfg.heads, cfg.order, cfg.betas) == (512, 4, "cyclic", (0.9, 0.999))
    assert config_from_args(["--dataset", "modular", "--hidden", "64"]).ffn == 256  # GPT: 4 x n_embd


def test_compact_format_restores_the_earlier_minibatch_preset():
    cfg = config_from_args(["--dataset", "modular", "--modular-format", "compact", "--batch-size", "512"])
    assert (cfg.batch_size, cfg.betas, cfg.order, cfg.eval_every) == (512, (0.9, 0.999), "shuffle", 100)


def test_batch_size_flag_takes_full_or_a_count(capsys):
    assert config_from_args(["--batch-size", "full", "--dataset", "imdb"]).batch_size == "full"
    assert config_from_args(["--batch-size", "64"]).batch_size == 64
    for bad in ("half", "0", "-3"):
        assert main(["--batch-size", bad, "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--batch-size" in err


def test_default_checkpoint_interval_is_a_multiple_of_the_eval_interval():
    assert resolve(Config(eval_every=300)).checkpoint_every == 1200
    assert resolve(Config(eval_every=10)).checkpoint_every == 1000
    assert resolve(Config(eval_every=5000)).checkpoint_every == 5000


def test_a_paper_run_trains_full_batch_on_seven_token_sequences(tmp_path):
    cfg = config_from_args(["--p", "13", "--hidden", "32", "--heads", "2", "--train-size", "50", "--steps", "3",
                            "--eval-every", "1", "--out", str(tmp_path), *QUIET])
    run = Run(cfg, log=lambda s: None)
    assert run.task.train_x.shape == (50, 7) and run.task.vocab_size == 17
    assert run.sampler.batch_size == 50
    seen = []
    original = run.model.forward
    run.model.forward = lambda x, mask=None: (seen.append(x.shape), original(x, mask))[1]
    run.fit()
    assert seen[0] == (50, 7)  # every training step: the whole subset
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["batch_size"] == "full" and saved["betas"] == [0.9, 0.98] and saved["modular_format"] == "paper"


def _as_written_before_the_presets_changed(run_dir):
    """Rewrite a compact run's directory into the form the previous version wrote: config.json
    without the new settings, sampler and meter state in their host-side form."""
    cfg = json.loads((run_dir / "config.json").read_text())
    for key in ("modular_format", "order"):
        cfg.pop(key)
    (run_dir / "config.json").write_text(json.dumps(cfg))
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    s = state["sampler"]
    state["sampler"] = {"gen": s["gen"], "perm": s["perm"], "pos": s["offset"] // cfg["batch_size"]}
    sums = state["meter"]["sums"]
    state["meter"] = {"sums": sums[:2].clone(), "count": int(sums[2])}
    state["config"] = cfg
    torch.save(state, run_dir / "checkpoint.pt")


def test_a_run_directory_from_before_the_change_resumes_unchanged(tmp_path):
    old = ["--p", "17", "--hidden", "32", "--heads", "2", "--modular-format", "compact", "--batch-size", "40",
           "--frac", "0.5", "--eval-every", "5", "--checkpoint-every", "5", *QUIET]
    assert main([*old, "--steps", "25", "--out", str(tmp_path / "whole")]) == 0
    # stopped mid-epoch (108 examples, batches of 40: two per epoch) at an eval point
    assert main([*old, "--steps", "15", "--out", str(tmp_path / "part")]) == 0
    (tmp_path / "part" / "summary.json").unlink()
    _as_written_before_the_presets_changed(tmp_path / "part")
    assert main(["--out", str(tmp_path / "part"), "--resume", "--steps", "25", "--quiet"]) == 0
    rows = [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
            for name in ("whole", "part") for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert rows[:len(rows) // 2] == rows[len(rows) // 2:]
    resumed = json.loads((tmp_path / "part" / "config.json").read_text())
    assert resumed["modular_format"] == "compact" and resumed["order"] == "shuffle"


def test_meter_state_from_before_the_count_moved_to_the_device():
    from grokfast_train.metrics import IntervalMeter

    meter = IntervalMeter(torch.device("cpu"))
    meter.load_state_dict({"sums": torch.tensor([6.0, 3.0], dtype=torch.float64), "count": 4})
    assert meter.read_and_reset() == (1.5, 0.75)


def test_unknown_format_and_order_are_one_line(capsys):
    for args in (["--modular-format", "words"], ["--order", "random"]):
        assert main([*args, "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and args[0] in err


def test_final_line_says_never(tmp_path, capsys):
    assert main(["--p", "13", "--hidden", "16", "--heads", "2", "--train-size", "40", "--steps", "2",
                 "--eval-every", "1", "--out", str(tmp_path), *QUIET]) == 0
    out = capsys.readouterr().out
    assert "never memorised" in out and "never generalised" in out and "at step never" not in out


def test_resolve_refuses_a_bad_order():
    with pytest.raises(UsageError, match="--order"):
        resolve(Config(order="sorted"))


def test_triton_backend_trains_head_size_20_like_the_torch_backend(tmp_path):
    """--hidden 80 --heads 4 (head size 20, one of the paper's model-wise sizes) on the fused path:
    the kernels under the interpreter follow PyTorch's ops step for step."""
    args = ["--p", "13", "--hidden", "80", "--heads", "4", "--train-size", "30", "--steps", "4", "--eval-every", "2",
            "--checkpoint-every", "2", *QUIET]
    assert main([*args, "--backend", "torch", "--out", str(tmp_path / "torch")]) == 0
    assert main([*args, "--backend", "triton", "--out", str(tmp_path / "triton")]) == 0
    rows = {b: [json.loads(line) for line in (tmp_path / b / "metrics.jsonl").read_text().splitlines()]
            for b in ("torch", "triton")}
    assert json.loads((tmp_path / "triton" / "config.json").read_text())["backend"] == "triton"
    for a, b in zip(rows["torch"], rows["triton"], strict=True):
        for key in ("train_loss", "test_loss", "weight_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
        assert (a["train_acc"], a["test_acc"]) == (b["train_acc"], b["test_acc"])
