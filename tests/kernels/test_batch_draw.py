"""kernels.batch_draw: the Triton kernel (under the interpreter) against an independent draw written
with Python loops, over several calls (the offsets it advances carry from one call to the next).

Integers are copied, so every comparison is exact."""

import importlib

import pytest
import torch

from kernels.batch_draw import MAX_L, draw_batch, draw_batch_reference
from tests.kernels.launch_spy import LaunchSpy

draw_mod = importlib.import_module("kernels.batch_draw")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the kernel writes starts as garbage, so an unwritten element shows in the result."""
    def poisoned(shape, dtype, device):
        return torch.full(shape, -7 if dtype != torch.bool else True, dtype=dtype, device=device)
    monkeypatch.setattr(draw_mod, "_empty", poisoned)


def _by_hand(perms, offsets, sizes, batches, width, x, y, mask, bases):
    """Run r's lane b is row perms[r][(offsets[r] + b) % sizes[r]] + bases[r]; then every offset moves on."""
    rows = [[perms[r][(offsets[r] + b) % sizes[r]] + bases[r] for b in range(width)] for r in range(len(perms))]
    for r in range(len(perms)):
        offsets[r] = (offsets[r] + batches[r]) % sizes[r]
    pick = lambda t: torch.stack([torch.stack([t[i] for i in rr]) if rr else t[:0] for rr in rows])
    return pick(x), pick(y), None if mask is None else pick(mask)


def _case(sizes, batches, width, length, with_mask, with_base, seed, calls=3):
    g = torch.Generator().manual_seed(seed)
    runs, p = len(sizes), max(sizes) + 2  # perm rows longer than any run's order: the tail is never read
    rows = sum(sizes) if with_base else max(sizes)
    x = torch.randint(0, 10 ** 6, (rows, length), generator=g)
    y = torch.randint(0, 10 ** 6, (rows,), generator=g)
    mask = torch.rand(rows, length, generator=g) > 0.5 if with_mask else None
    perm = torch.full((runs, p), -1, dtype=torch.long)
    for r, n in enumerate(sizes):
        perm[r, :n] = torch.randperm(n, generator=g)
    starts = [int(torch.randint(0, n, (), generator=g)) for n in sizes]
    bases = [sum(sizes[:r]) if with_base else 0 for r in range(runs)]
    offset = torch.tensor(starts)
    n, batch = torch.tensor(sizes), torch.tensor(batches)
    base = torch.tensor(bases) if with_base else None
    counter = torch.zeros(1, dtype=torch.int32)
    want_offsets = list(starts)
    for call in range(calls):
        got = draw_batch(perm, offset, n, batch, width, x, y, mask, base, counter)
        want = _by_hand(perm.tolist(), want_offsets, sizes, batches, width, x, y, mask, bases)
        for name, a, b in zip(("x", "y", "mask"), got, want):
            if b is None:
                assert a is None
                continue
            assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape)
            assert torch.equal(a, b), f"call {call}: {name} differs"
        assert offset.tolist() == want_offsets, f"call {call}: offsets {offset.tolist()} != {want_offsets}"
        assert counter.item() == 0, "the counter must be left at 0 for the next call"


@pytest.mark.parametrize("length", [1, 3, 7, 64, 129])
def test_one_run_matches_the_draw_by_hand(length):
    # 129: two rows per program (BLOCK_L 256), so several programs and the last one's ticket
    _case([11], [4], 4, length, with_mask=False, with_base=False, seed=length)


@pytest.mark.parametrize("with_mask", [False, True])
def test_a_pack_with_its_own_sizes_batches_and_bases(with_mask):
    # widths past a run's batch (padding lanes) and past its size (wrapping within one draw)
    _case([13, 5, 8, 1], [4, 5, 3, 1], 6, 5, with_mask=with_mask, with_base=True, seed=1)


def test_many_programs_per_run_advance_each_offset_once():
    # 300 tokens: BLOCK_L 512, one row per program -> 9 programs per run, 18 tickets per call
    _case([9, 17], [9, 4], 9, 300, with_mask=True, with_base=True, seed=2, calls=4)


def test_the_longest_rows():
    _case([3], [2], 2, MAX_L, with_mask=True, with_base=False, seed=3, calls=2)


def test_rows_longer_than_the_kernel_takes_go_through_the_reference(monkeypatch):
    spy = LaunchSpy(draw_mod._draw_kernel)
    monkeypatch.setattr(draw_mod, "_draw_kernel", spy)
    _case([5], [2], 2, MAX_L + 1, with_mask=True, with_base=False, seed=6, calls=2)
    assert not spy.calls


def test_nothing_drawn_still_advances_the_offsets():
    _case([5, 6], [2, 3], 0, 4, with_mask=False, with_base=True, seed=4)


def test_one_launch_per_draw_and_the_reference_agrees(monkeypatch):
    spy = LaunchSpy(draw_mod._draw_kernel)
    monkeypatch.setattr(draw_mod, "_draw_kernel", spy)
    g = torch.Generator().manual_seed(5)
    perm = torch.stack([torch.cat([torch.randperm(7, generator=g), torch.zeros(2, dtype=torch.long)]),
                        torch.randperm(9, generator=g)])
    x, y = torch.randint(0, 99, (16, 6), generator=g), torch.randint(0, 9, (16,), generator=g)
    args = (torch.tensor([7, 9]), torch.tensor([3, 2]), 3, x, y, None, torch.tensor([0, 7]))
    o_kernel, o_ref = torch.tensor([2, 6]), torch.tensor([2, 6])
    counter = torch.zeros(1, dtype=torch.int32)
    for _ in range(3):
        got = draw_batch(perm, o_kernel, *args, counter=counter)
        want = draw_batch_reference(perm, o_ref, *args)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] is None
        assert torch.equal(o_kernel, o_ref)
    assert len(spy.calls) == 3


@pytest.mark.parametrize("bad, message", [
    (dict(perm=torch.zeros(4, dtype=torch.long)), "perm must be int64 (R, P)"),
    (dict(offset=torch.zeros(2, dtype=torch.int32)), "offset must be a contiguous int64 (1,)"),
    (dict(perm=torch.zeros(3, 2, dtype=torch.long).t()[:1]), "perm's rows contiguous"),
    (dict(mask=torch.zeros(3, 5, dtype=torch.uint8)), "mask must be bool"),
    (dict(counter=torch.zeros(1, dtype=torch.int64)), "needs counter"),
])
def test_bad_arguments_get_one_clear_error(bad, message):
    args = dict(perm=torch.zeros(1, 3, dtype=torch.long), offset=torch.zeros(1, dtype=torch.long),
                n=torch.tensor([3]), batch=torch.tensor([2]), width=2, x=torch.zeros(3, 5, dtype=torch.long),
                y=torch.zeros(3, dtype=torch.long), counter=torch.zeros(1, dtype=torch.int32))
    args.update(bad)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        draw_batch(**args)
