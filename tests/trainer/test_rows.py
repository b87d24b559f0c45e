"""models/rows.py: the gather's gradient by ``index_add_`` on the CPU, against ATen's embedding backward."""

import pytest
import torch
from torch import nn

from grokfast_train.models.rows import Embedding, rows_grad


@pytest.mark.parametrize("padding_idx", [None, 0, 6])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 33), (2, 5, 9)])
def test_rows_grad_is_atens_embedding_backward_to_the_bit(shape, padding_idx):
    gen = torch.Generator().manual_seed(len(shape) * 10 + (padding_idx or 1))
    V, C = 11, 100
    ids = torch.randint(0, V, shape, generator=gen)
    ids.view(-1)[0] = 6  # a padding id taken at least once (when 6 is the padding row)
    dy = torch.randn(*shape, C, generator=gen)
    want = torch.ops.aten.embedding_dense_backward(dy.reshape(-1, C), ids.reshape(-1), V,
                                                   -1 if padding_idx is None else padding_idx, False)
    got = rows_grad(dy, ids, V, padding_idx)
    assert got.shape == (V, C) and got.dtype == torch.float32
    assert torch.equal(got, want)  # the same additions in the same order


def test_rows_grad_sums_repeated_ids_and_leaves_untaken_rows_zero():
    ids = torch.tensor([2, 2, 2, 4])
    dy = torch.arange(8.0).view(4, 2)
    got = rows_grad(dy, ids, 6)
    want = torch.zeros(6, 2)
    want[2] = dy[0] + dy[1] + dy[2]
    want[4] = dy[3]
    assert torch.equal(got, want)


def test_rows_grad_lands_in_the_tables_dtype():
    dy = torch.randn(5, 4).to(torch.bfloat16)
    got = rows_grad(dy, torch.tensor([0, 1, 1, 3, 2]), 4, dtype=torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[1], (dy[1].float() + dy[2].float()))


def test_embedding_is_nn_embedding_with_the_same_gradient():
    torch.manual_seed(0)
    ref = nn.Embedding(13, 8, padding_idx=0)
    emb = Embedding(13, 8, padding_idx=0)
    emb.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 13, (4, 9))
    dy = torch.randn(4, 9, 8)
    out_ref, out = ref(ids), emb(ids)
    assert torch.equal(out, out_ref)
    out_ref.backward(dy)
    out.backward(dy)
    assert torch.equal(emb.weight.grad, ref.weight.grad)
    assert torch.equal(emb.weight.grad[0], torch.zeros(8))  # the padding row gets none


@pytest.mark.parametrize("kw", [dict(max_norm=1.0), dict(scale_grad_by_freq=True), dict(sparse=True)])
def test_embedding_refuses_what_it_would_ignore(kw):
    with pytest.raises(ValueError, match="not supported"):
        Embedding(5, 3, **kw)
