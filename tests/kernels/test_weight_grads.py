"""kernels.weight_grads: the Triton kernel (under the interpreter) against dyᵀ x and Σ dy in float64.

Error: max |kernel - reference| / max(1, max |reference|), for dw and db. The interpreter computes fp32
dots exactly (whatever the precision mode) and bf16 products are exact in fp32, so both dtypes are held
to fp32 summation-order error."""

import importlib

import pytest
import torch

from kernels.weight_grads import MAX_PROBLEMS, WeightGrad, linear_weight_grads, linear_weight_grads_reference
from tests.kernels.launch_spy import LaunchSpy

wg_mod = importlib.import_module("kernels.weight_grads")
split_mod = importlib.import_module("kernels._split")
TOL = 1e-5


def _problem(g, runs, m, k, n, bias, accumulate, dtype=torch.float32, pad=3):
    lead = () if runs is None else (runs,)
    x = torch.randn(*lead, m, k + pad, generator=g).to(dtype)[..., :k]  # rows of a larger stride
    dy = torch.randn(*lead, m, n, generator=g).to(dtype)
    dw = torch.randn(*lead, n, k, generator=g)
    db = torch.randn(*lead, n, generator=g) if bias else None
    return WeightGrad(x, dy, dw, db, accumulate)


def _sum(g, runs, m, n, accumulate, dtype=torch.float32):
    """A sum alone (a LayerNorm's partial sums): db (+)= Σ_m dy, rows of a larger stride."""
    lead = () if runs is None else (runs,)
    return WeightGrad(None, torch.randn(*lead, m, n + 5, generator=g).to(dtype)[..., :n], None,
                      torch.randn(*lead, n, generator=g), accumulate)


def _f64(t):
    return None if t is None else t.double()


def _check(problems):
    want = [WeightGrad(_f64(q.x), q.dy.double(), _f64(q.dw), _f64(q.db), q.accumulate) for q in problems]
    linear_weight_grads_reference(want)
    linear_weight_grads(problems)
    for i, (got, ref) in enumerate(zip(problems, want)):
        for name, a, b in (("dw", got.dw, ref.dw), ("db", got.db, ref.db)):
            if b is None:
                continue
            err = (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())
            assert err <= TOL, f"problem {i} {name}: error {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_step_of_odd_layers_in_one_launch(dtype, monkeypatch):
    spy = LaunchSpy(wg_mod._weight_grad_kernel)
    monkeypatch.setattr(wg_mod, "_weight_grad_kernel", spy)
    g = torch.Generator().manual_seed(0)
    problems = [_problem(g, None, 70, 40, 37, True, False, dtype),  # more rows than one block, ragged tiles
                _problem(g, None, 5, 40, 2, True, True, dtype),  # a two-class head, added to a gradient
                _problem(g, None, 33, 20, 33, False, False, dtype),  # no bias
                _problem(g, 3, 19, 24, 17, True, False, dtype),  # a pack's layer: one (N, K) per run
                _problem(g, 2, 40, 48, 40, False, True, dtype)]
    _check(problems)
    assert len(spy.calls) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sums_alone_share_the_launch_with_the_layers(dtype, monkeypatch):
    # a step's LayerNorm gradients: sums of per-program partials, solo and packed, fresh and added to
    spy = LaunchSpy(wg_mod._weight_grad_kernel)
    monkeypatch.setattr(wg_mod, "_weight_grad_kernel", spy)
    g = torch.Generator().manual_seed(4)
    problems = [_sum(g, None, 7, 37, False, dtype), _problem(g, None, 70, 40, 37, True, False, dtype),
                _sum(g, 3, 70, 33, False, dtype),  # more rows than one block, two column tiles
                _sum(g, 2, 1, 5, True, dtype), _problem(g, 2, 9, 24, 17, False, True, dtype)]
    _check(problems)
    assert len(spy.calls) == 1


def test_more_layers_than_one_launch_takes():
    g = torch.Generator().manual_seed(1)
    _check([_problem(g, None, 9 + i, 16, 18, i % 2 == 0, i % 3 == 0) for i in range(MAX_PROBLEMS + 3)])


def test_every_problem_count_finds_its_programs():
    # P problems of different sizes: each program must find its own problem in the table
    g = torch.Generator().manual_seed(2)
    for p in range(1, MAX_PROBLEMS + 1):
        _check([_problem(g, None if i % 2 else 2, 3 + 7 * i, 16 + 8 * (i % 3), 5 + 11 * i, True, False)
                if i % 3 else _sum(g, None if i % 2 else 2, 3 + 7 * i, 5 + 11 * i, False) for i in range(p)])


def test_a_pack_gradient_into_strided_views_of_one_buffer():
    # PackedAdamW's layout: a run's (N, K) block is contiguous, runs are apart by more than N·K
    g = torch.Generator().manual_seed(3)
    runs, m, k, n = 3, 21, 40, 19  # two column tiles: the bias is added once, by the first
    flat = torch.randn(runs, n * k + n + 5, generator=g)
    dw = flat[:, :n * k].view(runs, n, k)
    db = flat[:, n * k:n * k + n]
    x, dy = torch.randn(runs, m, k, generator=g), torch.randn(runs, m, n, generator=g)
    untouched = flat[:, -5:].clone()
    _check([WeightGrad(x, dy, dw, db, True)])
    assert torch.equal(flat[:, -5:], untouched)


@pytest.mark.parametrize("accumulate", [False, True])
def test_a_sum_wider_than_its_partials_gets_zeros_past_them(accumulate, monkeypatch):
    # an embedding's position table (rows past the sequence length) and token types (past type 0): a sum's db
    # wider than dy, in a run-strided buffer, next to a layer, all in one launch
    spy = LaunchSpy(wg_mod._weight_grad_kernel)
    monkeypatch.setattr(wg_mod, "_weight_grad_kernel", spy)
    g = torch.Generator().manual_seed(5)
    runs, m, n, wide = 2, 45, 37, 37 * 3 + 4  # the tail spans whole column tiles and a ragged one
    flat = torch.randn(runs, wide + 7, generator=g)
    db = flat[:, :wide]
    if not accumulate:
        db.fill_(float("nan"))  # a fresh sum writes every column, the tail as zeros
    solo_db = torch.full((n + 40,), float("nan")) if not accumulate else torch.randn(n + 40, generator=g)
    untouched = flat[:, wide:].clone()
    problems = [WeightGrad(None, torch.randn(runs, m, n, generator=g), None, db, accumulate),
                _problem(g, None, 20, 16, 9, True, False),
                WeightGrad(None, torch.randn(3, n, generator=g), None, solo_db, accumulate)]
    tails = [q.db[..., n:].clone() for q in (problems[0], problems[2])]
    _check(problems)
    assert len(spy.calls) == 1
    for q, before in zip((problems[0], problems[2]), tails):
        assert torch.equal(q.db[..., n:], before if accumulate else torch.zeros_like(before))
    assert torch.equal(flat[:, wide:], untouched)


@pytest.mark.parametrize("bad, message", [
    (dict(dy=torch.zeros(6, 3, dtype=torch.bfloat16)), "of one dtype"),
    (dict(dw=torch.zeros(3, 4, dtype=torch.float64)), "dw must be float32 (3, 4)"),
    (dict(dw=torch.zeros(4, 3)), "dw must be float32 (3, 4)"),
    (dict(db=torch.zeros(4)), "db must be float32 (3,)"),
    (dict(x=torch.zeros(4, 6).t()), "contiguous rows"),
    (dict(x=None), "both None for a sum alone (db given)"),
    (dict(x=None, dw=None), "both None for a sum alone (db given)"),
    (dict(x=None, dw=None, db=torch.zeros(2)), "a sum's db must be float32 (3,) (or wider"),
    (dict(x=None, dw=None, db=torch.zeros(2, 4)), "a sum's db must be float32 (3,) (or wider"),
])
def test_bad_problems_get_one_clear_error(bad, message):
    q = dict(x=torch.zeros(6, 4), dy=torch.zeros(6, 3), dw=torch.zeros(3, 4), db=None)
    q.update(bad)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        linear_weight_grads([WeightGrad(**q)])


def _split_counts(problems):
    rows, *_ = wg_mod._meta(problems, wg_mod._TILES[problems[0].dy.dtype][:3])
    return [rows[i * wg_mod._META + 13] for i in range(len(problems))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_problems_split_their_rows_and_sum_the_partials_in_a_fixed_order(dtype, monkeypatch):
    """Rows split among programs (here every 32 rows: the kernel's BLOCK_M), each tile's partials summed by the
    program with its last ticket: against the reference, the same bits on a second launch, and every ticket
    counter back at zero. Layers, a pack, a sum wider than its partials, added to and fresh, in one launch."""
    monkeypatch.setattr(split_mod, "ROWS_PER_SPLIT", 32)
    spy = LaunchSpy(wg_mod._weight_grad_kernel)
    monkeypatch.setattr(wg_mod, "_weight_grad_kernel", spy)
    g = torch.Generator().manual_seed(7)
    problems = [_problem(g, None, 200, 40, 37, True, False, dtype),  # 7 splits, the last ragged
                _problem(g, 3, 70, 24, 17, True, True, dtype),  # a pack's layer, added to: 3 splits per run
                WeightGrad(None, torch.randn(2, 97, 33, generator=g).to(dtype), None,
                           torch.full((2, 70), float("nan")), False),  # a sum, zeros past its 33 columns
                _problem(g, None, 20, 16, 9, True, False, dtype)]  # one split: written directly
    assert _split_counts(problems) == [7, 3, 4, 1]
    before = [(q.dw.clone() if q.dw is not None else None, q.db.clone()) for q in problems]
    _check(problems)
    assert len(spy.calls) == 1
    first = [(q.dw.clone() if q.dw is not None else None, q.db.clone()) for q in problems]
    for q, (dw, db) in zip(problems, before):  # again, from the same starting values
        if q.dw is not None:
            q.dw.copy_(dw)
        q.db.copy_(db)
    linear_weight_grads(problems)
    for q, (dw, db) in zip(problems, first):
        assert (q.dw is None or torch.equal(q.dw, dw)) and torch.equal(q.db, db)
    counters = split_mod._BUFFERS[(torch.device("cpu"), torch.int32)][-1]
    assert torch.equal(counters, torch.zeros_like(counters))


def test_the_split_rule_caps_a_problems_programs(monkeypatch):
    # the modular step's k and v (3,072 rows, 16 tiles of 32 x 32): 12 programs of 256 rows a tile; the paper's full
    # batch (17,238 rows): 68; a wide pack's layer has programs enough without splitting
    assert split_mod.split_rows(3072, 16, 32) == (12, 256)
    assert split_mod.split_rows(17238, 16, 32) == (68, 256)
    assert split_mod.split_rows(512, 64 * 16, 32) == (2, 256)
    assert split_mod.split_rows(512, 4096, 32) == (1, 512)
    assert split_mod.split_rows(0, 16, 32) == (1, 32)
    monkeypatch.setattr(split_mod, "MAX_PROGRAMS", 8)
    monkeypatch.setattr(split_mod, "ROWS_PER_SPLIT", 32)
    g = torch.Generator().manual_seed(8)
    problems = [_problem(g, None, 300, 40, 37, True, False)]  # 4 tiles: at most 2 programs each
    assert _split_counts(problems) == [2]
    _check(problems)
