"""The CUDA-graph path's host side, on the CPU: argument checks, the refusal, the choice of steps per
replay, the loop's stops (a replay of several steps never crosses an eval point or a shuffled epoch),
the chunked evaluation's masking, and resuming across --cuda-graph. The captures themselves run in
tests/gpu/test_graph_cuda.py."""

import gc
import json
import weakref

import pytest
import torch

from grokfast_train import graph
from grokfast_train.cli import config_from_args, main
from grokfast_train.errors import UsageError
from grokfast_train.loop import steps_to_host_work
from grokfast_train.sampler import EpochSampler
from grokfast_train.train import Run

SMALL = ["--dataset", "modular", "--p", "23", "--hidden", "32", "--heads", "2", "--frac", "0.5", "--quiet",
         "--device", "cpu"]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s")
    return rows


def test_resolve_mode():
    assert graph.resolve_mode("auto", CPU, "torch") == "off"
    assert graph.resolve_mode("auto", CUDA, "torch") == "off"  # torch.optim.AdamW's state is not captured
    assert graph.resolve_mode("auto", CUDA, "triton") == "on"
    assert graph.resolve_mode("off", CUDA, "triton") == "off"
    assert graph.resolve_mode("on", CUDA, "triton") == "on"
    with pytest.raises(UsageError, match="needs a CUDA device"):
        graph.resolve_mode("on", CPU, "torch")
    with pytest.raises(UsageError, match="needs --backend triton"):
        graph.resolve_mode("on", CUDA, "torch")
    with pytest.raises(UsageError, match="auto, on or off"):
        graph.resolve_mode("yes", CUDA, "triton")


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cuda_graph_on_is_refused_on_cpu_in_one_line(tmp_path, capsys, device):
    if device == "auto" and torch.cuda.is_available():
        pytest.skip("auto resolves to CUDA here")
    out = tmp_path / "run"
    args = [*SMALL[:-2], "--device", device, "--steps", "5", "--cuda-graph", "on", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cuda-graph on needs a CUDA device" in err[0], err
    assert not (out / "config.json").exists()  # refused before anything was written


def test_bad_cuda_graph_value_is_a_usage_error(tmp_path, capsys):
    assert main([*SMALL, "--steps", "5", "--cuda-graph", "yes", "--out", str(tmp_path)]) == 2
    assert "--cuda-graph" in capsys.readouterr().err


def test_auto_records_off_on_cpu(tmp_path):
    assert main([*SMALL, "--steps", "4", "--eval-every", "2", "--out", str(tmp_path)]) == 0
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["cuda_graph"] == "off" and cfg["dtype"] == "fp32"


def test_choose_unroll_divides_eval_every():
    assert [graph.choose_unroll(e) for e in (1, 7, 10, 11, 12, 100, 1000)] == [1, 7, 5, 1, 6, 5, 8]
    assert graph.choose_unroll(10, max_unroll=1) == 1
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError):
            graph.choose_unroll(bad)
    assert [graph.steps_this_replay(limit, 4) for limit in (1, 3, 4, 9)] == [1, 1, 4, 4]
    with pytest.raises(ValueError):
        graph.steps_this_replay(0, 4)


class _Unrolled:
    """GraphSteps' choice of steps per replay, with the replay done eagerly: what the loop sees of it."""

    def __init__(self, run, unroll):
        self.run, self.unroll, self.taken = run, unroll, []

    def __call__(self, limit):
        k = graph.steps_this_replay(limit, self.unroll)
        for _ in range(k):
            self.run.train_step()
        self.taken.append(k)
        return k


@pytest.mark.parametrize("order,batch", [("shuffle", 32), ("cyclic", 40)])
def test_replays_of_several_steps_keep_eval_points_and_epochs_exact(tmp_path, order, batch):
    """Unrolled by 4 against one step at a time: the same rows at the same steps, the same weights.
    Shuffled, 198 training pairs in batches of 32 make a 6-step epoch that 4 does not divide, and
    eval_every 10 is no multiple of 4 either: a replay crossing an epoch start would skip its new
    permutation, one crossing an eval point would lose the row."""
    common = [*SMALL, "--order", order, "--batch-size", str(batch), "--eval-every", "10",
              "--checkpoint-every", "10", "--steps", "37", "--grokfast-alpha", "0.9"]
    eager = Run(config_from_args([*common, "--out", str(tmp_path / "eager")]), log=lambda _: None)
    eager.fit()
    run = Run(config_from_args([*common, "--out", str(tmp_path / "unrolled")]), log=lambda _: None)
    if order == "shuffle":
        assert run.sampler.batches_per_epoch == 6
    run.stepper = _Unrolled(run, 4)
    run.fit()
    assert 4 in run.stepper.taken and sum(run.stepper.taken) == 37
    rows = _rows(tmp_path / "unrolled")
    assert [r["step"] for r in rows] == [10, 20, 30, 37]
    assert rows == _rows(tmp_path / "eager")
    for a, b in zip(eager.model.parameters(), run.model.parameters()):
        assert torch.equal(a, b)


def test_steps_to_host_work():
    class R:  # only what steps_to_host_work reads
        pass

    r = R()
    r.cfg = config_from_args([*SMALL, "--steps", "25", "--eval-every", "10", "--order", "shuffle"])
    r.sampler = EpochSampler(9, 3, 0, torch.device("cpu"), "shuffle")
    assert r.sampler.batches_per_epoch == 3
    seen = {}
    for s in (0, 1, 2, 3, 8, 9, 10, 20, 22, 24):
        r.step = s
        seen[s] = steps_to_host_work(r)
    # next of: eval (10, 20), end (25), epoch start (multiples of 3)
    assert seen == {0: 3, 1: 2, 2: 1, 3: 3, 8: 1, 9: 1, 10: 2, 20: 1, 22: 2, 24: 1}
    r.sampler = EpochSampler(9, 3, 0, torch.device("cpu"), "cyclic")
    r.step = 3
    assert steps_to_host_work(r) == 7


@pytest.mark.parametrize("chunk", [7, 16, 23, 1000])
def test_chunked_evaluation_masks_the_ragged_last_chunk(tmp_path, chunk):
    """GraphEval's arithmetic, run eagerly: fixed chunks at a device-side offset, the rows past the end
    re-read and masked out, equal to the plain batched evaluation (a test set of 133 rows: 7 divides it,
    16 and 23 leave a ragged last chunk, 1000 is one chunk clamped to the set)."""
    run = Run(config_from_args([*SMALL, "--steps", "30", "--lr", "0.01", "--eval-batch-size", str(chunk),
                                "--out", str(tmp_path)]), log=lambda _: None)
    for _ in range(30):  # until some test answers are right, so that the correct count is checked too
        run.advance(1)
    n = run.task.test_x.shape[0]
    task = run.task
    with torch.no_grad():  # put a correctly answered row last: the re-read copies of it must not count
        right = (run.model(task.test_x).argmax(-1) == task.test_y).nonzero().flatten()
    j = right[0].item()
    for t in (task.test_x, task.test_y):
        t[[j, n - 1]] = t[[n - 1, j]]
    ev = graph.GraphEval(run)
    assert ev.chunk == min(chunk, n) and ev.chunks == -(-n // min(chunk, n))
    want, want_norm = graph.eager_test_sums(run)
    for _ in range(2):  # the finish resets the sums and offset for the next evaluation
        got, norm = (t.clone() for t in ev.eager())
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        assert torch.equal(norm, want_norm)
    assert 0 < want[1] < n and want[2] == n
    assert ev.start.item() == 0 and ev.sums.abs().sum().item() == 0


@pytest.mark.parametrize("chunk", [50, 1000])
def test_a_triton_evaluation_takes_the_fused_forward_and_matches_the_plain_modules(tmp_path, chunk):
    """On the triton backend an evaluation chunk runs the step's fused products (``deferred``'s forward; Triton
    under the interpreter) and the weight norm is one reduction over FusedAdamW's flat buffer. Against the plain
    modules' forward and per-row cross-entropies in float64, and the norm of the unique parameters in float64:
    in three chunks (the last ragged) and in one, the whole set."""
    run = Run(config_from_args([*SMALL, "--backend", "triton", "--steps", "1", "--eval-batch-size", str(chunk),
                                "--out", str(tmp_path)]), log=lambda _: None)
    task = run.task
    with torch.no_grad():
        logits = run.model(task.test_x).double()  # (outside deferred(): nn.Linear's products)
    task.test_y[::2] = logits[::2].argmax(-1)  # half the answers right, so that the correct count is checked too
    ev = graph.GraphEval(run)
    assert ev.chunks == (1 if chunk == 1000 else 3)
    got, norm = (t.clone() for t in ev.eager())
    want_loss = torch.nn.functional.cross_entropy(logits, task.test_y, reduction="sum").item()
    want_correct = (logits.argmax(-1) == task.test_y).sum().item()
    unique = {id(p): p for p in run.model.parameters()}.values()
    want_norm = sum(p.double().square().sum() for p in unique).sqrt().item()
    assert abs(got[0].item() - want_loss) <= 1e-5 * want_loss
    assert want_correct > 0 and abs(got[1].item() - want_correct) <= 1  # (a near tie may fall either way)
    assert got[2].item() == task.test_x.shape[0]
    assert abs(norm.item() - want_norm) <= 1e-6 * want_norm


def test_graph_eval_call_refuses_cpu(tmp_path):
    run = Run(config_from_args([*SMALL, "--steps", "5", "--out", str(tmp_path)]), log=lambda _: None)
    with pytest.raises(UsageError, match="needs a CUDA device"):
        graph.GraphEval(run)()
    with pytest.raises(UsageError, match="needs a CUDA device"):
        graph.GraphSteps(run)


def test_resume_may_change_cuda_graph(tmp_path, capsys):
    """A graph run and an eager run are one trajectory, so --cuda-graph may change on resume: here a run
    whose config.json says on (as a CUDA run writes it) continues on the CPU with --cuda-graph off."""
    args = [*SMALL, "--eval-every", "5", "--checkpoint-every", "5", "--out", str(tmp_path / "a")]
    assert main([*args, "--steps", "10"]) == 0
    assert main([*SMALL, "--eval-every", "5", "--checkpoint-every", "5", "--steps", "20",
                 "--out", str(tmp_path / "b")]) == 0
    cfg_path = tmp_path / "a" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["cuda_graph"] = "on"
    cfg_path.write_text(json.dumps(cfg))
    assert main(["--out", str(tmp_path / "a"), "--resume", "--steps", "20", "--quiet"]) == 2  # on, on a CPU
    assert "--cuda-graph on needs a CUDA device" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "a"), "--resume", "--steps", "20", "--quiet", "--cuda-graph", "off"]) == 0
    assert json.loads(cfg_path.read_text())["cuda_graph"] == "off"
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


def test_run_directory_from_before_the_fields_resumes_as_fp32_eager(tmp_path):
    args = [*SMALL, "--eval-every", "5", "--checkpoint-every", "5", "--out", str(tmp_path)]
    assert main([*args, "--steps", "5"]) == 0
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["cuda_graph"], cfg["dtype"]
    cfg_path.write_text(json.dumps(cfg))
    resumed = config_from_args(["--out", str(tmp_path), "--resume", "--steps", "10"])
    assert resumed.cuda_graph == "off" and resumed.dtype == "fp32"


class _FakeGraph:
    """A 'captured graph' that replays by calling the Python it was given: what GraphSteps and GraphEval do
    around their captures, run on the CPU. (A real capture runs that Python once, recording its kernels.)"""

    def __init__(self, fn):
        self.fn, self.replays = fn, 0

    def replay(self):
        self.replays += 1
        self.fn()


class _FakeStream:
    def wait_stream(self, other):
        pass


class _NoStream:
    def __init__(self, stream):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def fake_cuda_graphs(monkeypatch) -> None:
    """CUDA's streams and graphs replaced by the stand-ins above, for the graph classes on the CPU."""
    monkeypatch.setattr(graph, "_check_cuda", lambda run: None)
    monkeypatch.setattr(graph, "_record", lambda fn, pool, stream: _FakeGraph(fn))
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", _NoStream)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())


def test_graph_classes_driven_on_the_cpu_give_the_eager_run(tmp_path, monkeypatch):
    """GraphSteps and GraphEval with CUDA's streams and graphs replaced by stand-ins: warm-up, captures of
    5 and 1 steps, replays, the chunked evaluation replayed with its reset -- the same rows and weights as
    the eager run (shuffled 6-step epochs, Grokfast on, a ragged last evaluation chunk)."""
    fake_cuda_graphs(monkeypatch)
    common = [*SMALL, "--order", "shuffle", "--batch-size", "32", "--eval-every", "10", "--checkpoint-every", "10",
              "--steps", "47", "--grokfast-alpha", "0.9", "--eval-batch-size", "50"]
    eager = Run(config_from_args([*common, "--out", str(tmp_path / "eager")]), log=lambda _: None)
    eager.fit()
    run = Run(config_from_args([*common, "--out", str(tmp_path / "graph")]), log=lambda _: None)
    run.stepper = graph.GraphSteps(run)
    run.test_sums = graph.GraphEval(run, pool=run.stepper.pool)
    run.fit()
    assert run.stepper.unroll == 5 and set(run.stepper.graphs) == {1, 5}
    assert run.stepper.graphs[5].replays > 0
    chunk, finish = run.test_sums.graphs
    assert finish.replays == 4 and chunk.replays == 4 * 3  # 5 evaluations, the first eager; 133 rows in 3 chunks
    assert _rows(tmp_path / "graph") == _rows(tmp_path / "eager")
    for a, b in zip(eager.model.parameters(), run.model.parameters()):
        assert torch.equal(a, b)


def test_a_dropped_run_is_freed_at_once(tmp_path, monkeypatch):
    """The run owns its stepper and evaluator and they point back weakly, so a finished run -- on a GPU
    its graphs and their memory pool -- is freed when it is dropped, not at a later cycle collection: a
    sweep trains run after run in one process. Checked with the collector off, eager and graph classes."""
    fake_cuda_graphs(monkeypatch)
    args = [*SMALL, "--steps", "12", "--eval-every", "6"]
    Run(config_from_args([*args, "--out", str(tmp_path / "first")]), log=lambda _: None).fit()  # torch's one-time set-up
    gc.collect()
    gc.disable()
    try:
        for name, graphs in (("eager", False), ("graph", True)):
            run = Run(config_from_args([*args, "--out", str(tmp_path / name)]), log=lambda _: None)
            if graphs:
                run.stepper = graph.GraphSteps(run)
                run.test_sums = graph.GraphEval(run, pool=run.stepper.pool)
            run.fit()
            alive = weakref.ref(run)
            del run
            assert alive() is None, name
    finally:
        gc.enable()


def test_a_capture_runs_with_the_cycle_collector_paused(monkeypatch):
    """A collection inside a capture could destroy an earlier run's unreachable graph mid-capture, which
    CUDA refuses; _record collects first and keeps the collector off until the capture ends."""
    seen = {}

    class Captured:  # torch.cuda.graph's place: records what the collector did around the capture
        def __init__(self, g, pool=None, stream=None):
            pass

        def __enter__(self):
            seen["garbage before"] = garbage() is not None

        def __exit__(self, *exc):
            return False

    class Cycle:
        pass

    cycle = Cycle()
    cycle.me = cycle
    garbage = weakref.ref(cycle)
    del cycle
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", Captured)
    assert gc.isenabled()
    graph._record(lambda: seen.update(collector_on=gc.isenabled()), None, None)
    assert seen == {"garbage before": False, "collector_on": False}
    assert gc.isenabled()
