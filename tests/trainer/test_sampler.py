"""The device-side sampler: the batches it draws, across epochs and resumes, with no per-step host state."""

import pytest
import torch

from grokfast_train.sampler import EpochSampler

CPU = torch.device("cpu")


def reference_shuffled_batches(n: int, bs: int, seed: int, count: int) -> list[list[int]]:
    """What the sampler drew before its state moved to the device: a fresh randperm from one seeded
    CPU generator per epoch, consecutive slices, the remainder dropped."""
    gen = torch.Generator().manual_seed(seed)
    bs = min(bs, n)
    out, perm, pos = [], None, n // bs
    while len(out) < count:
        if pos == n // bs:
            perm, pos = torch.randperm(n, generator=gen), 0
        out.append(perm[pos * bs:(pos + 1) * bs].tolist())
        pos += 1
    return out


def draw(sampler: EpochSampler, first_step: int, count: int) -> list[list[int]]:
    out = []
    for step in range(first_step, first_step + count):
        sampler.prepare(step)
        out.append(sampler.next_indices().tolist())
    return out


@pytest.mark.parametrize("n,bs", [(10, 3), (12, 4), (5, 8), (1, 1), (100, 7)])
def test_shuffled_batches_equal_the_host_side_sampler(n, bs):
    assert draw(EpochSampler(n, bs, 3, CPU, "shuffle"), 0, 25) == reference_shuffled_batches(n, bs, 3, 25)


@pytest.mark.parametrize("order", ["shuffle", "cyclic"])
@pytest.mark.parametrize("stop", [1, 3, 4, 7])  # mid-epoch, at an epoch boundary, ...
def test_resume_continues_the_same_stream(order, stop):
    whole = draw(EpochSampler(13, 4, 9, CPU, order), 0, 12)
    first = EpochSampler(13, 4, 9, CPU, order)
    head = draw(first, 0, stop)
    second = EpochSampler(13, 4, 9, CPU, order)
    second.load_state_dict(first.state_dict())
    assert head + draw(second, stop, 12 - stop) == whole


def test_cyclic_order_is_the_subset_order_wrapping_around():
    n, bs = 10, 4
    sampler = EpochSampler(n, bs, 0, CPU, "cyclic")
    stream = [i % n for i in range(5 * bs)]  # itertools.cycle over 0..n-1, cut into batches of bs
    assert draw(sampler, 0, 5) == [stream[k * bs:(k + 1) * bs] for k in range(5)]


def test_full_batch_sees_every_example_every_step():
    sampler = EpochSampler(6, 6, 0, CPU, "cyclic")
    assert draw(sampler, 0, 3) == [list(range(6))] * 3
    shuffled = draw(EpochSampler(6, 10, 0, CPU, "shuffle"), 0, 3)  # a subset smaller than the batch
    assert all(sorted(b) == list(range(6)) for b in shuffled) and shuffled[0] != shuffled[1]


def test_replayed_step_advances_without_host_arguments():
    """What a CUDA graph replays: the same call, nothing passed from the host, a new batch each time.
    Within a shuffled epoch ``prepare`` has nothing to do, so consecutive calls must still move on."""
    sampler = EpochSampler(12, 3, 1, CPU, "shuffle")
    sampler.prepare(0)
    epoch = [sampler.next_indices().tolist() for _ in range(4)]  # one call per replay
    assert sorted(i for b in epoch for i in b) == list(range(12))  # four different batches: the whole epoch
    assert epoch == reference_shuffled_batches(12, 3, 1, 4)
    buffer = sampler.perm.data_ptr()
    sampler.prepare(4)  # the next epoch is written into the same buffer a captured step reads
    assert sampler.perm.data_ptr() == buffer and sampler.next_indices().tolist() == reference_shuffled_batches(12, 3, 1, 5)[4]


def test_sampler_keeps_its_position_on_the_device():
    sampler = EpochSampler(12, 3, 1, CPU, "cyclic")
    before = sampler.offset.clone()
    sampler.next_indices()
    assert isinstance(sampler.offset, torch.Tensor) and sampler.offset.item() == before.item() + 3


def test_loads_a_checkpoint_written_before_the_offset_moved_to_the_device():
    n, bs = 10, 3
    gen = torch.Generator().manual_seed(5)
    perm = torch.randperm(n, generator=gen)  # the old sampler after drawing 2 batches of epoch 0
    old_state = {"gen": gen.get_state(), "perm": perm, "pos": 2}
    sampler = EpochSampler(n, bs, 5, CPU, "shuffle")
    sampler.load_state_dict(old_state)
    assert draw(sampler, 2, 5) == reference_shuffled_batches(n, bs, 5, 7)[2:]


def test_order_mismatch_and_unknown_order_are_refused():
    with pytest.raises(ValueError, match="order"):
        EpochSampler(4, 2, 0, CPU, "random")
    cyclic = EpochSampler(4, 2, 0, CPU, "cyclic")
    with pytest.raises(ValueError, match="order"):
        EpochSampler(4, 2, 0, CPU, "shuffle").load_state_dict(cyclic.state_dict())
