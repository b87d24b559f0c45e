"""kernels.token_embedding: the Triton kernels (under the interpreter) against tok[ids] + pos[:L] and its
gradients computed in float64 by scatter-adds written here (an independent computation).

Error: max |kernel - reference| / max(1, max |reference|); the forward is exact (one fp32 add)."""

import importlib

import pytest
import torch

from kernels.token_embedding import (MAX_V, token_position_embedding, token_position_embedding_backward,
                                     token_position_embedding_backward_reference)
from tests.kernels.launch_spy import LaunchSpy

te_mod = importlib.import_module("kernels.token_embedding")
TOL = 1e-5


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(te_mod, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                               device=device))


def _by_hand(ids, tok, pos, dy):
    """y = tok[ids] + pos[l]; dtok[v] = sum of dy over the ids equal to v; dpos[l] = sum of dy at position l."""
    ids3, tok3, pos3, dy3 = (ids, tok, pos, dy) if tok.dim() == 3 else (ids[None], tok[None], pos[None], dy[None])
    y = tok3.double()[torch.arange(tok3.shape[0])[:, None, None], ids3] + pos3.double()[:, None, :ids3.shape[-1]]
    dtok = torch.zeros(tok3.shape, dtype=torch.float64)
    dpos = torch.zeros(pos3.shape, dtype=torch.float64)
    for r in range(tok3.shape[0]):
        dtok[r].index_add_(0, ids3[r].reshape(-1), dy3[r].double().reshape(-1, dy3.shape[-1]))
        dpos[r, :ids3.shape[-1]] = dy3[r].double().sum(0)
    squeeze = (lambda t: t[0]) if tok.dim() == 2 else (lambda t: t)
    return squeeze(y), squeeze(dtok), squeeze(dpos)


def _case(ids_shape, v, p, c, seed=0, run_gap=0):
    g = torch.Generator().manual_seed(seed)
    runs = ids_shape[:1] if len(ids_shape) == 3 else ()
    # a slice of longer rows, as a decoder's ids are of the task's sequences: read in place
    ids = torch.randint(0, v, (*ids_shape[:-1], ids_shape[-1] + 1), generator=g)[..., :ids_shape[-1]]
    if runs:  # a pack's tables as strided views of one buffer (PackedAdamW's layout)
        tok = torch.randn(runs[0], v * c + run_gap, generator=g)[:, :v * c].view(runs[0], v, c)
        pos = torch.randn(runs[0], p * c + run_gap, generator=g)[:, :p * c].view(runs[0], p, c)
    else:
        tok, pos = torch.randn(v, c, generator=g), torch.randn(p, c, generator=g)
    dy = torch.randn(*ids_shape, c, generator=g)
    t, q = tok.clone().requires_grad_(), pos.clone().requires_grad_()
    if runs:  # leaves that stay strided views (a clone would make them contiguous)
        t, q = tok.requires_grad_(), pos.requires_grad_()
        assert t.stride(0) == v * c + run_gap
    y = token_position_embedding(ids, t, q)
    y.backward(dy)
    want = _by_hand(ids, tok, pos, dy)
    for name, a, b in (("y", y, want[0]), ("dtok", t.grad, want[1]), ("dpos", q.grad, want[2])):
        assert a.shape == b.shape and torch.isfinite(a).all(), name
        err = (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err <= TOL, f"{name}: {err:.3g}"


@pytest.mark.parametrize("ids_shape, v, p, c", [
    ((9, 6), 20, 8, 32),  # every position in use
    ((33, 7), 117, 512, 128),  # the modular task's tables: most position rows get 0
    ((5, 3), 3, 3, 20),  # a width that is not a power of two, fewer tokens than one block
    ((70, 1), 40, 1, 16),  # one position: all rows one position row's
])
def test_one_run_matches_the_gradients_by_hand(ids_shape, v, p, c):
    _case(ids_shape, v, p, c)


def test_a_pack_reads_and_writes_its_own_tables():
    _case((3, 11, 5), 37, 16, 24, seed=1, run_gap=7)


@pytest.mark.parametrize("ids_shape, v, p, c", [
    ((33, 7), 117, 512, 128),  # the modular tables, 231 ids: 4 programs a block, position blocks past L zeros
    ((3, 40, 5), 37, 16, 24),  # a pack: 200 ids a run, 4 programs a block
])
def test_a_long_batch_splits_its_ids_and_sums_the_partials_in_a_fixed_order(ids_shape, v, p, c, monkeypatch):
    """Ids split among a block's programs (here every 64 ids: the walk's step), the block's last ticket summing
    their partials: the gradients by hand, the same bits on a second backward, every ticket counter back at 0."""
    split_mod = importlib.import_module("kernels._split")
    monkeypatch.setattr(split_mod, "ROWS_PER_SPLIT", 64)
    assert split_mod.split_rows(ids_shape[-2] * ids_shape[-1], 8, 64)[0] == 4
    _case(ids_shape, v, p, c, seed=3, run_gap=5 if len(ids_shape) == 3 else 0)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, v, ids_shape, generator=g)
    lead = ids_shape[:1] if len(ids_shape) == 3 else ()
    dx = torch.randn(*ids_shape, c, generator=g)
    grads = [token_position_embedding_backward(ids, dx, torch.empty(*lead, v, c), torch.empty(*lead, p, c))
             for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    counters = split_mod._BUFFERS[(torch.device("cpu"), torch.int32)][-1]
    assert torch.equal(counters, torch.zeros_like(counters))


def test_one_launch_each_way(monkeypatch):
    spies = [LaunchSpy(te_mod._embed_fwd_kernel), LaunchSpy(te_mod._embed_bwd_kernel)]
    monkeypatch.setattr(te_mod, "_embed_fwd_kernel", spies[0])
    monkeypatch.setattr(te_mod, "_embed_bwd_kernel", spies[1])
    _case((300, 6), 117, 512, 128)  # 1,800 ids: five steps of each program's walk
    assert [len(s.calls) for s in spies] == [1, 1]


@pytest.mark.parametrize("runs", [None, 3])
@pytest.mark.parametrize("fn", [token_position_embedding_backward, token_position_embedding_backward_reference])
def test_the_backward_alone_writes_every_element_of_given_gradients(fn, runs):
    # the trainer's destinations: views of the optimiser's buffer (a pack's run-strided), stale (NaN) before
    g = torch.Generator().manual_seed(5)
    lead, (v, p, c, gap) = (() if runs is None else (runs,)), (37, 16, 24, 7)
    ids = torch.randint(0, v, (*lead, 11, 6), generator=g)
    dy = torch.randn(*lead, 11, 6, c, generator=g)
    tok, pos = torch.randn(*lead, v, c, generator=g), torch.randn(*lead, p, c, generator=g)
    flat = torch.full((runs or 1, (v + p) * c + gap), float("nan"))
    dtok = flat[:, :v * c].view(-1, v, c)
    dpos = flat[:, v * c:(v + p) * c].view(-1, p, c)
    if runs is None:
        dtok, dpos = dtok[0], dpos[0]
    got = fn(ids, dy, dtok, dpos)
    assert got[0] is dtok and got[1] is dpos
    for a, b in zip(got, _by_hand(ids, tok, pos, dy)[1:]):
        assert torch.isfinite(a).all()
        assert (a.double() - b).abs().max().item() <= TOL * max(1.0, b.abs().max().item())
    assert flat[:, -gap:].isnan().all()  # nothing written past the tables


def test_the_backward_alone_refuses_gradients_unlike_their_tables():
    ids, dy = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 4)
    for dtok, dpos in ((torch.zeros(5, 4, dtype=torch.float64), torch.zeros(8, 4)),
                       (torch.zeros(5, 4), torch.zeros(8, 6)[:, :4])):
        with pytest.raises(ValueError, match="must be float32 like its table, with contiguous rows"):
            token_position_embedding_backward(ids, dy, dtok, dpos)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tok=torch.zeros(5, 4, dtype=torch.float64)), "tok has dtype float64"),
    (dict(ids=torch.zeros(2, 9, dtype=torch.long)), "at least 9 rows"),
    (dict(tok=torch.zeros(MAX_V, 4)), f"at most {MAX_V} rows"),
    (dict(ids=torch.zeros(2, 3, dtype=torch.int32)), "ids int64"),
])
def test_bad_arguments_get_one_clear_error(kwargs, message):
    args = dict(ids=torch.zeros(2, 3, dtype=torch.long), tok=torch.zeros(5, 4), pos=torch.zeros(8, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        token_position_embedding(**args)
