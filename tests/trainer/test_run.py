"""End-to-end runs through the CLI on a small modular task: files, resume, interruption, failures."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grokfast_train.cli import config_from_args, main
from grokfast_train.errors import RunError
from grokfast_train.train import Run

SMALL = ["--dataset", "modular", "--p", "23", "--hidden", "32", "--heads", "2", "--batch-size", "64",
         "--frac", "0.5", "--eval-every", "10", "--checkpoint-every", "10", "--quiet", "--device", "cpu"]


def run_cli(tmp: Path, *extra: str) -> int:
    return main([*SMALL, "--out", str(tmp), *extra])


def history(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s")
    return rows


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_writes_config_metrics_summary(tmp_path):
    assert run_cli(tmp_path, "--steps", "30") == 0
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dataset"] == "modular" and cfg["steps"] == 30 and cfg["device"] == "cpu" and cfg["backend"] == "torch"
    rows = history(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30]
    for r in rows:
        assert set(r) >= {"step", "train_acc", "train_loss", "test_acc", "test_loss", "weight_norm"}
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and r["weight_norm"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("memorization_step", "generalization_step", "grokking_delay", "best_test_acc",
                "final_test_acc", "steps_per_s"):
        assert key in summary
    assert summary["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert "modular arithmetic" in summary["data"]


def test_resume_extends_and_equals_uninterrupted(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_cli(whole, "--steps", "50", "--grokfast-alpha", "0.9") == 0
    assert run_cli(split, "--steps", "30", "--grokfast-alpha", "0.9") == 0
    assert main(["--out", str(split), "--resume", "--steps", "50", "--quiet"]) == 0
    assert history(split) == history(whole)
    assert_same_weights(final_weights(split), final_weights(whole))
    assert json.loads((split / "summary.json").read_text())["final_step"] == 50


def test_finished_run_is_not_overwritten(tmp_path, capsys):
    assert run_cli(tmp_path, "--steps", "10") == 0
    before = (tmp_path / "metrics.jsonl").read_text()
    assert run_cli(tmp_path, "--steps", "10") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finished run" in err[0] and "--force" in err[0]
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert run_cli(tmp_path, "--steps", "20", "--force") == 0
    assert [r["step"] for r in history(tmp_path)] == [10, 20]
    assert main(["--out", str(tmp_path), "--resume", "--steps", "30", "--quiet"]) == 0  # a forced run resumes
    assert [r["step"] for r in history(tmp_path)] == [10, 20, 30]


def test_resume_refuses_changed_hyperparameters(tmp_path, capsys):
    assert run_cli(tmp_path, "--steps", "10") == 0
    assert main(["--out", str(tmp_path), "--resume", "--steps", "20", "--lr", "0.5"]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--resume", "--steps", "10"]) == 2  # nothing to extend
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already at step 10" in err[0] and "--steps larger than 10" in err[0], err
    assert main(["--out", str(tmp_path / "nothing"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to resume" in err[0] and "without --resume" in err[0], err


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    assert run_cli(tmp_path, "--steps", "10") == 0
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["--out", str(tmp_path), "--resume", "--steps", "20"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0]


def test_non_finite_loss_at_once_writes_no_checkpoint(tmp_path, capsys):
    # Adam moves every weight by ~lr per step: at lr 1e18 the LayerNorm statistics overflow at once.
    code = run_cli(tmp_path, "--steps", "50", "--eval-every", "2", "--lr", "1e18", "--weight-decay", "0")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "non-finite" in err[0] and "no checkpoint" in err[0]
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "checkpoint.pt").exists()


class _PoisonedRun(Run):
    """A fault injected for real: a weight becomes inf after step 25, as an overflow would make it."""

    def train_step(self):
        super().train_step()
        if self.step == 25:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config_from_args([*SMALL, "--out", str(tmp_path), "--steps", "60"])
    with pytest.raises(RunError, match="non-finite between steps 20 and 30.*last good checkpoint \\(step 20\\)"):
        _PoisonedRun(cfg, log=lambda _: None).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 20 and [r["step"] for r in history(tmp_path)] == [10, 20]
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "summary.json").exists()
    # the kept checkpoint resumes cleanly
    assert main(["--out", str(tmp_path), "--resume", "--quiet"]) == 0
    assert [r["step"] for r in history(tmp_path)] == [10, 20, 30, 40, 50, 60]


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "grokfast_train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_ctrl_c_checkpoints_and_resume_matches(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = [*SMALL, "--steps", "400"]
    proc = _cli(*args, "--out", str(cut))
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("step "):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out
    state = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert 10 <= state["step"] < 400
    assert main(["--out", str(cut), "--resume", "--quiet"]) == 0
    assert main([*args, "--out", str(whole)]) == 0
    assert history(cut) == history(whole)
    assert_same_weights(final_weights(cut), final_weights(whole))


@pytest.mark.parametrize("args,code,needle", [
    (["--frac", "0"], 2, "--frac"),
    (["--frac", "-0.5"], 2, "--frac"),
    (["--frac", "1.5"], 2, "--frac"),
    (["--frac", "nan"], 2, "--frac"),
    (["--steps", "0"], 2, "--steps"),
    (["--steps", "-3"], 2, "--steps"),
    (["--dataset", "cifar"], 2, "--dataset"),
    (["--dataset", "imdb", "--data-source", "ftp"], 2, "--data-source"),
    (["--steps", "ten"], 2, "--steps"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], 2, "--device"),
])
def test_bad_input_is_one_line_and_exit_code(tmp_path, args, code, needle):
    proc = subprocess.run([sys.executable, "-m", "grokfast_train", "--out", str(tmp_path / "r"), *args],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_plot_writes_a_png_of_the_run(tmp_path, capsys):
    from grokfast_train.plot import main as plot_main

    run_dir = tmp_path / "run"
    assert run_cli(run_dir, "--steps", "30") == 0
    out = tmp_path / "curves.png"
    assert plot_main([str(run_dir), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert plot_main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_bad_data_is_one_line_and_exit_code(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = ["--cache-dir", str(tmp_path / "cache")]
    cases = [
        (["--dataset", "imdb", "--data-dir", str(tmp_path / "missing")], 2, "missing"),
        (["--dataset", "imdb", "--data-dir", str(empty)], 1, "empty"),
        (["--dataset", "yelp"], 1, "hub"),  # this machine has no route to the hub
    ]
    for args, code, needle in cases:
        proc = subprocess.run([sys.executable, "-m", "grokfast_train", "--out", str(tmp_path / "r"), *cache, *args],
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code, proc.stderr
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert needle in lines[0], lines[0]


def test_triton_backend_trains_like_the_torch_backend(tmp_path):
    """The whole trainer on the Triton path (kernels under the interpreter, FusedAdamW) follows the
    PyTorch path: same data, same init, so the same metrics up to float rounding."""
    args = [*SMALL, "--steps", "6", "--eval-every", "3", "--checkpoint-every", "3", "--grokfast-alpha", "0.9"]  # the interpreter is slow
    assert main([*args, "--backend", "torch", "--out", str(tmp_path / "torch")]) == 0
    assert main([*args, "--backend", "triton", "--out", str(tmp_path / "triton")]) == 0
    assert json.loads((tmp_path / "triton" / "config.json").read_text())["backend"] == "triton"
    for a, b in zip(history(tmp_path / "torch"), history(tmp_path / "triton"), strict=True):
        assert a["step"] == b["step"]
        for key in ("train_loss", "test_loss", "weight_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    wa, wb = final_weights(tmp_path / "torch"), final_weights(tmp_path / "triton")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


class _InterruptedRun(Run):
    """Ctrl-C delivered for real (SIGINT to this process) during the step ``at``; optionally a
    weight goes non-finite at step ``poison`` first."""

    at, poison = None, None

    def train_step(self):
        super().train_step()
        if self.step + 1 == self.poison:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        if self.step + 1 == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_during_the_last_step_still_finishes_the_run(tmp_path):
    cfg = config_from_args([*SMALL, "--out", str(tmp_path), "--steps", "30"])
    run = _InterruptedRun(cfg, log=lambda _: None)
    run.at = 30
    summary = run.fit()
    assert summary is not None and summary["final_step"] == 30
    assert (tmp_path / "summary.json").exists()


def test_ctrl_c_after_divergence_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config_from_args([*SMALL, "--out", str(tmp_path), "--steps", "40"])
    run = _InterruptedRun(cfg, log=lambda _: None)
    run.poison, run.at = 12, 15
    with pytest.raises(RunError, match="non-finite.*last good checkpoint \\(step 10\\)"):
        run.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 10 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_validates_against_the_saved_run_not_the_preset(tmp_path):
    assert run_cli(tmp_path, "--steps", "14", "--eval-every", "7", "--checkpoint-every", "7") == 0
    assert main(["--out", str(tmp_path), "--resume", "--steps", "28", "--checkpoint-every", "14", "--quiet"]) == 0
    assert [r["step"] for r in history(tmp_path)] == [7, 14, 21, 28]


@pytest.mark.parametrize("setup,args,code,needle", [
    ("run", ["--resume", "--steps", "20", "--backend", "triton"], 2, "--backend"),
    ("file", [], 2, "is a file"),
    ("bad-config", ["--resume", "--steps", "20"], 1, "config.json"),
    (None, ["--seed", "99999999999999999999999"], 2, "--seed"),
    (None, ["--grokfast-lamb", "-0.5"], 2, "--grokfast-lamb"),
    (None, ["--backend", "triton", "--hidden", "1032"], 2, "head sizes"),  # 1032 / 4 heads = 258 > 128
    (None, ["--p", "100003"], 2, "--p"),
])
def test_more_bad_input_is_one_line(tmp_path, capsys, setup, args, code, needle):
    out = tmp_path / "run"
    if setup == "run":
        assert run_cli(out, "--steps", "10") == 0
    elif setup == "file":
        out.write_text("not a directory")
    elif setup == "bad-config":
        assert run_cli(out, "--steps", "10") == 0
        (out / "config.json").write_text("[1, 2]")
    capsys.readouterr()
    assert run_cli(out, *args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
