"""EmbeddingSum: a linear layer of ``tok[ids] + pos`` computed from the tables equals the layer applied
to the summed rows -- values and the gradients of every input -- for one run and for a pack, whole and
sliced to positions. The reference is written out here (gather, add, x·Wᵀ + b), not the module's code.
fp64, so that a bound of 1e-12 separates rounding from a wrong formula."""

import pytest
import torch

from grokfast_train.models.embedding_sum import EmbeddingSum
from grokfast_train.models.runs import RunLinear

F64 = torch.float64


def tables(runs: int | None, V: int, L: int, C: int, out: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lead = () if runs is None else (runs,)
    tok = torch.randn(*lead, V, C, generator=g, dtype=F64).requires_grad_()
    pos = torch.randn(*lead, L, C, generator=g, dtype=F64).requires_grad_()
    lin = torch.nn.Linear(C, out).double() if runs is None else RunLinear(runs, C, out).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=F64))
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g, dtype=F64))
    return tok, pos, lin


def reference(tok, pos, lin, ids, start, stop):
    """Run r's rows gathered and summed, then x·W[r]ᵀ + b[r], written out."""
    if tok.dim() == 2:
        x = tok[ids[..., start:stop]] + pos[start:stop]
        return x @ lin.weight.T + lin.bias
    outs = []
    for r in range(tok.shape[0]):
        x = tok[r][ids[r, ..., start:stop]] + pos[r, start:stop]
        outs.append(x @ lin.weight[r].T + lin.bias[r])
    return torch.stack(outs)


def grads_of(y: torch.Tensor, inputs, seed: int):
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return torch.autograd.grad((y * w).sum(), inputs)


@pytest.mark.parametrize("runs", [None, 3])
@pytest.mark.parametrize("start,stop", [(0, 7), (0, 4), (6, 7), (2, 5)])
def test_projection_from_the_tables_equals_the_layer_on_the_summed_rows(runs, start, stop):
    V, L, C, out, B = 11, 7, 8, 5, 13
    tok, pos, lin = tables(runs, V, L, C, out, seed=start * 10 + stop)
    ids = torch.randint(0, V, (B, L) if runs is None else (runs, B, L), generator=torch.Generator().manual_seed(1))
    pos_rows = pos if runs is None else pos.unsqueeze(1)  # a pack's positions broadcast over its batch
    x = EmbeddingSum(ids, tok, pos_rows).positions(start, stop)
    assert x.shape == (*ids[..., start:stop].shape, C)
    inputs = (tok, pos, lin.weight, lin.bias)
    got, want = x.project(lin), reference(tok, pos, lin, ids, start, stop)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("tok", "pos", "weight", "bias"), grads_of(got, inputs, 2), grads_of(want, inputs, 2)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"grad {name}: {m}")
    # the residual: the summed rows themselves
    dense = x.dense()
    ref = (tok[ids[..., start:stop]] + pos[start:stop] if runs is None else
           torch.stack([tok[r][ids[r, ..., start:stop]] + pos[r, start:stop] for r in range(runs)]))
    torch.testing.assert_close(dense, ref, rtol=0, atol=0)


def test_it_is_used_only_on_the_cpu_and_only_where_there_are_fewer_pairs_than_positions():
    tok = torch.zeros(117, 4)
    assert EmbeddingSum.worth_it(torch.zeros(512, 6, dtype=torch.long), tok)
    assert not EmbeddingSum.worth_it(torch.zeros(117, 6, dtype=torch.long), tok)
    assert EmbeddingSum.worth_it(torch.zeros(3, 118, 6, dtype=torch.long), tok)  # per run: a pack's batch
    assert not EmbeddingSum.worth_it(torch.zeros(512, 6, dtype=torch.long, device="meta"), tok)
