"""Packed runs: every run of a pack is its solo run -- same weights, same batches, same trajectory, same files.

The solo runs (``train.Run``, torch.optim.AdamW + GrokfastEMA, nn.Linear ...) are the independent
computation the pack is compared with. A torch-backend pack's optimiser is ``PackedAdamW``'s rows (the solo
run's arithmetic); a triton-backend pack's runs the Triton kernel, in this suite under the interpreter
(``TRITON_INTERPRET=1``): a cross-implementation check as well.
"""

import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import kernels
from kernels.packed_adamw import PackedAdamW
from grokfast_train.config import Config, resolve
from grokfast_train.data import load_task
from grokfast_train.errors import UsageError
from grokfast_train.models import build_model
from grokfast_train.models.runs import bind_run, run_state, stack_states
from grokfast_train.pack import PackedRun
from grokfast_train.sampler import EpochSampler, PackSampler
from grokfast_train.train import Run

KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm")
# Runs that differ in everything a pack lets differ: subset size (full batch: 40 vs 70 vs 55 examples
# per step, so the pack pads), seed, init scale, lr, weight decay and the Grokfast filter.
RUNS = [dict(train_size=40, seed=0),
        dict(train_size=70, seed=1, lr=3e-3, weight_decay=0.1),
        dict(train_size=55, seed=2, init_scale=2.0, grokfast_alpha=0.9, grokfast_lamb=1.0)]


def cfg(out: Path, steps: int = 30, **kw) -> Config:
    base = dict(dataset="modular", p=13, hidden=16, heads=2, steps=steps, eval_every=10, quiet=True, out=str(out))
    return resolve(Config(**{**base, **kw}))


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def quiet(_line: str) -> None:
    pass


def assert_same_trajectory(a: Path, b: Path, tol: float = 2e-4) -> None:
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for k in KEYS:
            assert x[k] == pytest.approx(y[k], rel=tol, abs=tol), (a.name, x["step"], k)


# -- the model ---------------------------------------------------------------------------------


def _solo_models(cfgs, tasks):
    solos = []
    for c, t in zip(cfgs, tasks):
        m = build_model(c, t)
        kernels.scaled_init_(m, std=c.init_std, alpha=c.init_scale, seed=c.seed)
        solos.append(m)
    return solos


@pytest.mark.parametrize("backend", ["torch", "triton"])  # triton: the run-axis kernels, under the interpreter
@pytest.mark.parametrize("dataset", ["modular", "imdb"])
def test_packed_model_computes_each_runs_logits_and_gradients(dataset, backend, tmp_path):
    torch.manual_seed(0)
    if dataset == "modular":
        cfgs = [cfg(tmp_path / str(i), **r) for i, r in enumerate(RUNS)]
        tasks = [load_task(c, log=quiet) for c in cfgs]
        x = torch.stack([t.train_x[:37] for t in tasks])
        mask = None
    else:  # the encoder, built directly at a small size: padding mask, pad row, 10x init, pooler
        from grokfast_train.data.task import TaskData

        cfgs = [resolve(Config(dataset="imdb", hidden=24, heads=4, ffn=40, max_len=9, init_scale=s, seed=i, frac=1.0,
                               backend="torch")) for i, s in enumerate((10.0, 1.0, 3.0))]
        tasks = [TaskData("imdb", "t", torch.zeros(1, 9, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                          torch.zeros(1, 9, dtype=torch.long), torch.zeros(1, dtype=torch.long), 50, 2, 0, 1, pad_id=0)
                 for _ in cfgs]
        x = torch.randint(1, 50, (3, 11, 9))
        mask = torch.ones(3, 11, 9, dtype=torch.bool)
        mask[:, :4, 6:] = False
        x[~mask] = 0
        x[:, :, 1] = 0  # the pad id at a real position too: its row still gets no gradient (nn.Embedding's rule)
    solos = _solo_models(cfgs, tasks)  # the torch backend: the reference
    packed = build_model(dataclasses.replace(cfgs[0], backend=backend), tasks[0], runs=3)
    packed.load_state_dict(stack_states(solos))
    logits = packed(x, mask)
    (logits.square().sum()).backward()
    for r, solo in enumerate(solos):
        ref = solo(x[r], None if mask is None else mask[r])
        torch.testing.assert_close(logits[r], ref, rtol=1e-5, atol=1e-5)
        ref.square().sum().backward()
        # the scale of the whole gradient: some entries (the key bias) are zero up to rounding
        scale = max(float(q.grad.abs().max()) for q in solo.parameters())
        for name, p in packed.named_parameters():
            want = dict(solo.named_parameters())[name].grad
            torch.testing.assert_close(p.grad[r], want, rtol=1e-4, atol=1e-5 * scale)
        assert all(torch.equal(v, solo.state_dict()[k]) for k, v in run_state(packed, r).items())


def test_a_solo_model_bound_to_a_run_trains_that_runs_slice():
    """bind_run + PackedAdamW.set_run_grads (the kernel's way of taking a run-by-run pack's gradients): run r
    trained through a solo model whose weights are views of run r's slice of the pack's, its gradients copied
    into run r's row."""
    torch.manual_seed(0)
    cfgs = [cfg(Path("unused") / str(i), **r) for i, r in enumerate(RUNS)]
    tasks = [load_task(c, log=quiet) for c in cfgs]
    solos = _solo_models(cfgs, tasks)
    packed = build_model(cfgs[0], tasks[0], runs=3)
    packed.load_state_dict(stack_states(solos))
    opt = PackedAdamW(list(packed.parameters()), [dict(weight_decay=0.0)] * 3, kernel=False)  # no decay: a zero
    # gradient leaves a run where it is
    bound = bind_run(build_model(cfgs[1], tasks[1]), packed, 1)
    x = tasks[1].train_x[:9]
    torch.testing.assert_close(bound(x), solos[1](x), rtol=0, atol=0)  # run 1's weights, no copy made
    opt.zero_grad()  # drops .grad; set_run_grads binds the views again, zeroed
    bound(x).square().sum().backward()
    solos[1](x).square().sum().backward()
    opt.set_run_grads(1, [p.grad for p in bound.parameters()])
    for name, p in packed.named_parameters():
        assert torch.equal(p.grad[1], dict(solos[1].named_parameters())[name].grad), name
        assert not p.grad[0].any() and not p.grad[2].any(), name  # the other runs' rows untouched
    before = [p.detach().clone() for p in packed.parameters()]
    opt.step()  # the optimiser moves the pack's weights: the bound model sees them
    assert all(torch.equal(b, p[1]) for b, p in zip(bound.parameters(), packed.parameters()))
    assert not torch.equal(bound.layers[0].q.weight, solos[1].layers[0].q.weight)
    assert all(torch.equal(w[0], p[0]) for w, p in zip(before, packed.parameters()))  # run 0: zero gradient
    with pytest.raises(ValueError, match="not the pack's"):
        bind_run(torch.nn.Linear(2, 2), packed, 0)


# -- the sampler -------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["shuffle", "cyclic"])
@pytest.mark.parametrize("batch", [4, None])
def test_pack_sampler_draws_what_each_solo_sampler_draws(order, batch):
    sizes, seeds = [7, 10, 3], [0, 1, 2]
    pack = PackSampler(sizes, batch, seeds, torch.device("cpu"), order)
    solos = [EpochSampler(n, n if batch is None else batch, s, torch.device("cpu"), order) for n, s in zip(sizes, seeds)]
    for step in range(25):  # several epochs of every run, epochs of different lengths
        pack.prepare(step)
        for s in solos:
            s.prepare(step)
        idx = pack.next_indices()
        for r, s in enumerate(solos):
            want = s.next_indices()
            assert torch.equal(idx[r][pack.valid[r]], want), (step, r)
    assert pack.valid.sum(1).tolist() == [s.batch_size for s in solos]


# -- whole runs --------------------------------------------------------------------------------


# Both ways a pack computes its step: run by run (the CPU's default) and stacked (CUDA's, run here too).
STACKED, LAYOUT_IDS = [False, True], ["run-by-run", "stacked"]
LAYOUTS = pytest.mark.parametrize("stacked", STACKED, ids=LAYOUT_IDS)


@pytest.fixture(scope="module", params=STACKED, ids=LAYOUT_IDS)
def solo_and_packed(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    for i, r in enumerate(RUNS):
        assert Run(cfg(root / f"solo{i}", **r), log=quiet).fit() is not None
    results = PackedRun([cfg(root / f"pack{i}", **r) for i, r in enumerate(RUNS)], log=quiet,
                        stacked=request.param).fit()
    assert all(res is not None and "error" not in res for res in results)
    return root, request.param


def test_each_packed_run_follows_its_solo_trajectory(solo_and_packed):
    """Stacked, within fp32 tolerance (R runs' products in one, summed in another order). Run by run, to the
    bit: the same solo model's forward and backward on the run's own weights, then the solo run's own
    update (torch's fused AdamW after GrokfastEMA, ``PackedAdamW``'s rows) -- every weight and optimiser
    state it checkpoints and every training loss and accuracy are the solo run's. (The test loss and the
    weight norm are sums in another order: the pack evaluates all runs through the stacked model and takes
    each run's norm over its row of the flat buffer.)"""
    root, stacked = solo_and_packed
    for i in range(len(RUNS)):
        assert_same_trajectory(root / f"pack{i}", root / f"solo{i}")
        if stacked:
            continue
        for p, s in zip(rows(root / f"pack{i}"), rows(root / f"solo{i}"), strict=True):
            assert (p["train_loss"], p["train_acc"]) == (s["train_loss"], s["train_acc"]), (i, p["step"])
        pk = torch.load(root / f"pack{i}" / "checkpoint.pt", weights_only=True)
        sk = torch.load(root / f"solo{i}" / "checkpoint.pt", weights_only=True)
        for k, v in sk["model"].items():
            assert torch.equal(pk["model"][k], v), (i, k)
        for j, state in sk["optimizer"]["state"].items():
            assert all(torch.equal(pk["optimizer"]["state"][j][k], state[k]) for k in state), (i, j)


def test_each_packed_run_writes_the_files_of_its_solo_run(solo_and_packed):
    root, _ = solo_and_packed
    for i in range(len(RUNS)):
        p, s = root / f"pack{i}", root / f"solo{i}"
        assert sorted(f.name for f in p.iterdir()) == sorted(f.name for f in s.iterdir())
        pc, sc = json.loads((p / "config.json").read_text()), json.loads((s / "config.json").read_text())
        assert {**pc, "out": None} == {**sc, "out": None}
        ps, ss = json.loads((p / "summary.json").read_text()), json.loads((s / "summary.json").read_text())
        assert ps.keys() == ss.keys()
        for k in ("memorization_step", "generalization_step", "train_size", "data", "final_step"):
            assert ps[k] == ss[k]
        pk = torch.load(p / "checkpoint.pt", weights_only=True)
        sk = torch.load(s / "checkpoint.pt", weights_only=True)
        assert pk.keys() == sk.keys() and pk["step"] == sk["step"]
        assert pk["optimizer"]["param_groups"] == sk["optimizer"]["param_groups"]
        assert pk["sampler"]["offset"] == sk["sampler"]["offset"] and torch.equal(pk["sampler"]["perm"], sk["sampler"]["perm"])
        for k, v in sk["model"].items():
            torch.testing.assert_close(pk["model"][k], v, rtol=2e-3, atol=2e-4)


def test_a_packed_checkpoint_resumes_solo_and_a_solo_one_in_a_pack(solo_and_packed, tmp_path):
    root, _ = solo_and_packed
    for i, r in enumerate(RUNS):  # the references: solo runs of 50 steps straight through
        assert Run(cfg(tmp_path / f"long{i}", steps=50, **r), log=quiet).fit() is not None
    # packed to 30, then solo to 50
    shutil.copytree(root / "pack0", tmp_path / "a")
    assert Run(dataclasses.replace(cfg(tmp_path / "a", steps=50, **RUNS[0]), resume=True), log=quiet).fit()
    assert_same_trajectory(tmp_path / "a", tmp_path / "long0")
    # solo to 30, then in a pack to 50
    for i in (1, 2):
        shutil.copytree(root / f"solo{i}", tmp_path / f"b{i}")
    PackedRun([dataclasses.replace(cfg(tmp_path / f"b{i}", steps=50, **RUNS[i]), resume=True) for i in (1, 2)],
              log=quiet).fit()
    for i in (1, 2):
        assert_same_trajectory(tmp_path / f"b{i}", tmp_path / f"long{i}")


def test_a_pack_on_the_triton_kernels_follows_the_solo_runs(tmp_path):
    """The triton backend's pack (run-axis LayerNorm, attention over runs x batch, PackedAdamW's kernel),
    under the interpreter, against solo torch-backend runs. Small (the interpreter runs every attention
    program in NumPy): 12 and 20 pairs, full batch, 10 steps."""
    runs = [dict(train_size=12, seed=0), dict(train_size=20, seed=1, lr=3e-3, grokfast_alpha=0.9, grokfast_lamb=1.0)]
    PackedRun([cfg(tmp_path / f"t{i}", steps=10, backend="triton", **r) for i, r in enumerate(runs)], log=quiet,
              stacked=True).fit()
    for i, r in enumerate(runs):
        Run(cfg(tmp_path / f"s{i}", steps=10, **r), log=quiet).fit()
        assert_same_trajectory(tmp_path / f"t{i}", tmp_path / f"s{i}")


@LAYOUTS
def test_a_pack_resumes_exactly(tmp_path, stacked):
    PackedRun([cfg(tmp_path / f"s{i}", steps=40, **r) for i, r in enumerate(RUNS)], log=quiet, stacked=stacked).fit()
    PackedRun([cfg(tmp_path / f"r{i}", steps=20, **r) for i, r in enumerate(RUNS)], log=quiet, stacked=stacked).fit()
    again = [dataclasses.replace(cfg(tmp_path / f"r{i}", steps=40, **r), resume=True) for i, r in enumerate(RUNS)]
    PackedRun(again, log=quiet, stacked=stacked).fit()
    for i in range(len(RUNS)):
        strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
        assert strip(rows(tmp_path / f"r{i}")) == strip(rows(tmp_path / f"s{i}"))


@LAYOUTS
def test_a_run_that_diverges_is_frozen_and_the_others_go_on(tmp_path, stacked):
    runs = [dict(RUNS[0]), dict(train_size=50, seed=3, init_scale=1e20), dict(RUNS[1])]
    lines = []
    results = PackedRun([cfg(tmp_path / f"p{i}", **r) for i, r in enumerate(runs)], log=lines.append,
                        stacked=stacked).fit()
    assert "error" in results[1] and "non-finite" in results[1]["error"]
    assert not (tmp_path / "p1" / "summary.json").exists()
    assert any("p1" in line and "go on" in line for line in lines)
    Run(cfg(tmp_path / "solo0", **RUNS[0]), log=quiet).fit()
    Run(cfg(tmp_path / "solo2", **RUNS[1]), log=quiet).fit()
    assert_same_trajectory(tmp_path / "p0", tmp_path / "solo0")
    assert_same_trajectory(tmp_path / "p2", tmp_path / "solo2")


def test_a_pack_whose_runs_all_diverge_stops_at_once(tmp_path):
    """Nothing left to train: the pack stops at the eval point that froze its last run, not at --steps."""
    runs = [dict(train_size=50, seed=s, init_scale=1e20) for s in (1, 2)]
    pack = PackedRun([cfg(tmp_path / f"p{i}", steps=60, **r) for i, r in enumerate(runs)], log=quiet)
    results = pack.fit()
    assert all("non-finite" in r["error"] for r in results)
    assert pack.step == 10  # the first eval point


def test_runs_that_cannot_share_a_pack_are_refused(tmp_path):
    with pytest.raises(UsageError, match="must share (ffn|hidden)"):
        PackedRun([cfg(tmp_path / "a", train_size=40), cfg(tmp_path / "b", train_size=40, hidden=32)], log=quiet)
    with pytest.raises(UsageError, match="must share steps"):  # one schedule per pack
        PackedRun([cfg(tmp_path / "a", train_size=40), cfg(tmp_path / "b", train_size=40, steps=40)], log=quiet)
    with pytest.raises(UsageError, match="distinct"):
        PackedRun([cfg(tmp_path / "a", train_size=40), cfg(tmp_path / "a", train_size=50)], log=quiet)
    assert not (tmp_path / "a").exists() or not (tmp_path / "a" / "config.json").exists()


def test_a_pack_driven_through_the_graph_classes_gives_the_eager_pack(tmp_path, monkeypatch):
    """GraphSteps and GraphEval around a pack, with CUDA's streams and graphs replaced by stand-ins that
    call the captured Python (tests/trainer/test_graph_cpu.py): warm-up, 5- and 1-step replays, the
    chunked (R, 3) evaluation with its ragged last chunk and reset -- the rows of the eager pack.
    Shuffled epochs of different lengths per run (40 and 55 pairs, batch 8: 5 and 6 steps) stop replays at each."""
    from grokfast_train import graph
    from tests.trainer.test_graph_cpu import fake_cuda_graphs

    fake_cuda_graphs(monkeypatch)
    common = dict(steps=37, order="shuffle", batch_size=8, eval_batch_size=20)
    runs = [RUNS[0], RUNS[2]]
    PackedRun([cfg(tmp_path / f"e{i}", **common, **r) for i, r in enumerate(runs)], log=quiet, stacked=True).fit()
    pack = PackedRun([cfg(tmp_path / f"g{i}", **common, **r) for i, r in enumerate(runs)], log=quiet, stacked=True)
    pack.stepper = graph.GraphSteps(pack)
    pack.test_sums = graph.GraphEval(pack, pool=pack.stepper.pool)
    pack.fit()
    assert pack.stepper.unroll == 5 and pack.stepper.graphs[5].replays > 0
    chunk, finish = pack.test_sums.graphs
    assert finish.replays == 3 and chunk.replays == 3 * 3  # 4 evaluations, the first eager; 43 rows in 3 chunks
    for i in range(len(runs)):
        strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
        assert strip(rows(tmp_path / f"g{i}")) == strip(rows(tmp_path / f"e{i}"))


@LAYOUTS
def test_a_bf16_pack_follows_the_bf16_solo_runs(tmp_path, stacked):
    """--dtype bf16 applies to packs: autocast around the forward, fp32 master weights and optimiser.
    Stacked: batched bf16 products, other accumulation orders than the solo runs', so a looser tolerance
    than fp32's."""
    PackedRun([cfg(tmp_path / f"p{i}", dtype="bf16", **r) for i, r in enumerate(RUNS[:2])], log=quiet,
              stacked=stacked).fit()
    for i, r in enumerate(RUNS[:2]):
        Run(cfg(tmp_path / f"s{i}", dtype="bf16", **r), log=quiet).fit()
        assert_same_trajectory(tmp_path / f"p{i}", tmp_path / f"s{i}", tol=2e-2)


class _CtrlCAt(PackedRun):
    """SIGINT to this process during step 15 of a pack, as a Ctrl-C at the terminal would be."""

    def train_step(self):
        super().train_step()
        if self.step + 1 == 15:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_pack_stopped_mid_interval_resumes_exactly(tmp_path):
    """Ctrl-C at step 15 (between evaluations, shuffled epochs): every run checkpoints its partial
    interval; resumed, the pack writes the rows of the uninterrupted pack."""
    common = dict(steps=30, order="shuffle", batch_size=16)
    runs = [RUNS[0], RUNS[2]]
    PackedRun([cfg(tmp_path / f"w{i}", **common, **r) for i, r in enumerate(runs)], log=quiet).fit()
    results = _CtrlCAt([cfg(tmp_path / f"c{i}", **common, **r) for i, r in enumerate(runs)], log=quiet).fit()
    assert results == [None, None]  # interrupted, checkpoints saved
    for i in range(len(runs)):
        state = torch.load(tmp_path / f"c{i}" / "checkpoint.pt", weights_only=True)
        assert state["step"] == 15 and state["meter"]["sums"][2] == 5 * 16  # steps 11..15 counted
    PackedRun([dataclasses.replace(cfg(tmp_path / f"c{i}", **common, **r), resume=True) for i, r in enumerate(runs)],
              log=quiet).fit()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    for i in range(len(runs)):
        assert strip(rows(tmp_path / f"c{i}")) == strip(rows(tmp_path / f"w{i}"))
