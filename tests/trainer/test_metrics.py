"""grokfast_train.metrics against independent computations: every figure of every run is read from these.

The meter and ``evaluate`` are checked against ``F.cross_entropy`` over all examples at once, with
unequal batches so that an unweighted mean of batch means would differ; ``summarize`` against
hand-built histories that sit exactly on the thresholds; ``weight_norm`` against a sum of squares
over named, de-duplicated parameters.
"""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grokfast_train.metrics import IntervalMeter, evaluate, first_step, summarize, weight_norm

C = 5  # classes


def _batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        logits = torch.randn(n, C, generator=g) * 3
        labels = torch.randint(0, C, (n,), generator=g)
        out.append((logits, labels))
    return out


def _by_hand(batches):
    """Per-example mean cross-entropy and accuracy over the concatenation of the batches."""
    logits = torch.cat([lg for lg, _ in batches]).double()
    labels = torch.cat([lb for _, lb in batches])
    per_example = -torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    correct = (logits.argmax(-1) == labels).double()
    return per_example.mean().item(), correct.mean().item()


def _feed(meter, batches, backend="torch"):
    for logits, labels in batches:
        loss = meter.loss(logits, labels, backend)  # what train_step backpropagates: the batch mean
        assert loss.item() == pytest.approx(F.cross_entropy(logits.double(), labels).item(), rel=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_meter_weights_each_example_not_each_batch(backend):
    batches = _batches([1, 9, 3, 17])
    meter = IntervalMeter(torch.device("cpu"))
    _feed(meter, batches, backend)
    loss, acc = meter.read_and_reset()
    want_loss, want_acc = _by_hand(batches)
    # a mean of the four batch means (or accuracies) is far from these with batches of 1 and 17
    batch_mean = sum(F.cross_entropy(lg, lb).item() for lg, lb in batches) / len(batches)
    assert abs(batch_mean - want_loss) > 1e-2
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert acc == pytest.approx(want_acc, abs=1e-12)
    assert 0 < want_acc < 1


def test_meter_reset_starts_a_fresh_interval():
    first, second = _batches([4, 11], seed=1), _batches([7, 2, 5], seed=2)
    meter = IntervalMeter(torch.device("cpu"))
    _feed(meter, first)
    assert meter.read_and_reset() == pytest.approx(_by_hand(first), rel=1e-6)
    _feed(meter, second)  # nothing of the first interval may leak into the second
    assert meter.read_and_reset() == pytest.approx(_by_hand(second), rel=1e-6)


def test_meter_state_round_trips_a_partial_interval():
    """The checkpointed meter (through torch.save/load with weights_only, as checkpoint.py loads it)
    continues the interval: the reading covers the batches before and after the save."""
    batches = _batches([3, 8, 6, 13], seed=3)
    meter = IntervalMeter(torch.device("cpu"))
    _feed(meter, batches[:2])
    buf = io.BytesIO()
    torch.save(meter.state_dict(), buf)
    buf.seek(0)
    restored = IntervalMeter(torch.device("cpu"))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    _feed(restored, batches[2:])
    loss, acc = restored.read_and_reset()
    want_loss, want_acc = _by_hand(batches)
    assert loss == pytest.approx(want_loss, rel=1e-6) and acc == pytest.approx(want_acc, abs=1e-12)


class _BagOfTokens(nn.Module):
    """logits = sum of the embeddings of the unmasked tokens; records the mode it was called in."""

    def __init__(self, vocab=11, classes=C):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.emb = nn.Parameter(torch.randn(vocab, classes, generator=g))
        self.modes = []

    def forward(self, x, mask=None):
        self.modes.append(self.training)
        e = self.emb[x]
        if mask is not None:
            e = e * mask[..., None]
        return e.sum(1)


def _eval_set(n=37, length=6, seed=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 11, (n, length), generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    mask = torch.rand(n, length, generator=g) < 0.7
    return x, y, mask


@pytest.mark.parametrize("use_mask", [False, True])
def test_evaluate_is_cross_entropy_over_the_whole_set(use_mask):
    model = _BagOfTokens()
    x, y, mask = _eval_set()
    mask = mask if use_mask else None
    with torch.no_grad():
        logits = model(x, mask).double()
    want_loss = F.cross_entropy(logits, y).item()
    want_acc = (logits.argmax(-1) == y).double().mean().item()
    # batches of 10 over 37 examples: 10, 10, 10, 7 -- a mean of batch means differs
    batch_means = [F.cross_entropy(logits[i:i + 10], y[i:i + 10]).item() for i in range(0, 37, 10)]
    assert abs(sum(batch_means) / len(batch_means) - want_loss) > 1e-3
    model.train()
    model.modes.clear()
    loss, acc = evaluate(model, x, y, mask, batch_size=10)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert acc == pytest.approx(want_acc, abs=1e-12)
    assert 0 < want_acc < 1
    assert model.modes == [False] * 4  # every batch in eval mode, every example seen once
    assert model.training  # the mode is restored
    # one batch, or batches larger than the set, give the same numbers
    for bs in (1, 37, 1000):
        assert evaluate(model, x, y, mask, batch_size=bs) == pytest.approx((loss, acc), rel=1e-6)


def test_evaluate_leaves_an_eval_model_in_eval_mode():
    model = _BagOfTokens().eval()
    x, y, _ = _eval_set(n=5)
    evaluate(model, x, y, None, batch_size=2)
    assert not model.training


def _rows(*rows):
    return [dict(step=s, train_acc=tr, test_acc=te) for s, tr, te in rows]


def test_summary_counts_a_value_exactly_at_the_threshold():
    history = _rows(
        (10, 0.50, 0.10),
        (20, 0.98999, 0.20),  # just under the memorisation threshold
        (30, 0.99, 0.9499),  # exactly at it; test just under 0.95
        (40, 1.00, 0.95),  # test exactly at the generalisation threshold
        (50, 0.97, 0.99),
        (60, 0.98, 0.96),
    )
    s = summarize(history, mem_threshold=0.99, gen_threshold=0.95, steps_per_s=12.5)
    assert s["memorization_step"] == 30 and s["generalization_step"] == 40
    assert s["grokking_delay"] == 10
    assert s["memorization_threshold"] == 0.99 and s["generalization_threshold"] == 0.95
    assert s["best_test_acc"] == 0.99
    assert s["final_test_acc"] == 0.96 and s["final_train_acc"] == 0.98 and s["final_step"] == 60
    assert s["steps_per_s"] == 12.5


def test_first_step_is_the_first_crossing_not_the_best():
    history = _rows((5, 0.2, 0.80), (10, 0.4, 0.70), (15, 0.9, 0.85))
    assert first_step(history, "test_acc", 0.8) == 5
    assert first_step(history, "test_acc", 0.85) == 15
    assert first_step(history, "train_acc", 0.4) == 10
    assert first_step(history, "train_acc", 0.91) is None
    assert first_step([], "train_acc", 0.0) is None


def test_summary_when_never_generalised_or_both_at_once():
    history = _rows((100, 0.995, 0.3), (200, 1.0, 0.5))
    s = summarize(history, 0.99, 0.95, steps_per_s=1.0)
    assert s["memorization_step"] == 100 and s["generalization_step"] is None and s["grokking_delay"] is None
    assert s["best_test_acc"] == 0.5 and s["final_step"] == 200
    never = summarize(_rows((100, 0.5, 0.3)), 0.99, 0.95, steps_per_s=1.0)
    assert never["memorization_step"] is None and never["grokking_delay"] is None
    together = summarize(_rows((100, 0.5, 0.3), (200, 0.99, 0.95)), 0.99, 0.95, steps_per_s=1.0)
    assert together["memorization_step"] == together["generalization_step"] == 200
    assert together["grokking_delay"] == 0
    # a generalisation before memorisation is a negative delay, not a swapped one
    odd = summarize(_rows((100, 0.5, 0.96), (200, 0.99, 0.97)), 0.99, 0.95, steps_per_s=1.0)
    assert odd["grokking_delay"] == -100
    empty = summarize([], 0.99, 0.95, steps_per_s=0.0)
    assert empty["memorization_step"] is None and empty["best_test_acc"] is None and empty["final_step"] == 0


def test_weight_norm_counts_tied_weights_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(13, 6), nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 13, bias=False))
    model[3].weight = model[0].weight  # tied, as the decoder's LM head
    with torch.no_grad():
        model[2].weight.uniform_(-2, 2)
    named = dict(model.named_parameters())  # one entry per distinct tensor
    assert len(named) == 5
    want = math.sqrt(sum((p.detach().double() ** 2).sum().item() for p in named.values()))
    assert weight_norm(model.parameters()) == pytest.approx(want, rel=1e-6)
    # the same tensor reached twice in the list is still counted once
    plist = [model[0].weight, model[1].weight, model[1].bias, model[2].weight, model[2].bias, model[3].weight]
    assert weight_norm(plist) == pytest.approx(want, rel=1e-6)
    # every element counts: doubling one tensor changes the norm by exactly its share
    with torch.no_grad():
        model[1].bias.mul_(2)
    b = model[1].bias.detach().double()
    want2 = math.sqrt(want ** 2 + 3 * (b / 2).pow(2).sum().item())
    assert weight_norm(model.parameters()) == pytest.approx(want2, rel=1e-6)
