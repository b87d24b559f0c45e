"""kernels.fused_embedding: the Triton kernels (under the interpreter) against the float64 reference.

Weights are drawn in fp32 (the only supported dtype); the reference runs in float64 on exactly those
values, so the error measured is the kernels' own fp32 arithmetic (and, for the word gradient, the
order in which the atomics add). Error metric: max |kernel - reference| / max(1, max |reference|),
per output and per gradient. Small vocabularies make ids repeat, so the atomic scatter must accumulate.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

from kernels.fused_embedding import embedding_layer_norm, embedding_layer_norm_reference

emb_mod = importlib.import_module("kernels.fused_embedding")

# fp32 -> largest allowed error relative to max(1, max|reference|), for y and all five gradients
# (measured under the interpreter: at most 1.2e-6 for y, 3e-7 for the gradients).
TOLERANCE = 1e-5
GRADS = ("dword", "dpos", "dtype", "dln_weight", "dln_bias")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the kernels write starts as NaN, so an unwritten element shows in the result."""
    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(emb_mod, "_empty", empty)


def _close(name, got, ref):
    assert got.dtype == torch.float32, (name, got.dtype)
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten memory?)"
    err = (got.double() - ref).abs().max().item() if got.numel() else 0.0
    scale = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    assert err <= TOLERANCE * scale, f"{name}: max error {err:.3g} > {TOLERANCE} x {scale:.3g}"


def _inputs(b, l, h, vocab, n_pos, n_types, type_ids, id_dtype, seed):
    g = torch.Generator().manual_seed(seed * 7919 + b * 131 + l * 17 + h)
    ids = torch.randint(0, vocab, (b, l), generator=g).to(id_dtype)
    tids = torch.randint(0, n_types, (b, l), generator=g).to(id_dtype) if type_ids else None
    weights = [torch.randn(vocab, h, generator=g), 0.5 * torch.randn(n_pos, h, generator=g),
               0.5 * torch.randn(n_types, h, generator=g), 1 + 0.5 * torch.randn(h, generator=g),
               0.3 * torch.randn(h, generator=g)]
    dy = torch.randn(b, l, h, generator=g)
    return ids, tids, [w.requires_grad_() for w in weights], dy


def _run_case(b, l, h, vocab=13, n_pos=None, n_types=2, type_ids=False, padding_idx=None,
              id_dtype=torch.int64, eps=1e-12, seed=0):
    n_pos = n_pos or l + 3  # a table longer than the sequence: rows past L must get zero gradient
    ids, tids, weights, dy = _inputs(b, l, h, vocab, n_pos, n_types, type_ids, id_dtype, seed)
    y = embedding_layer_norm(ids, *weights, eps, type_ids=tids, padding_idx=padding_idx)
    y.backward(dy)

    w64 = [w.detach().double().requires_grad_() for w in weights]
    y64 = embedding_layer_norm_reference(ids.long(), *w64, eps, type_ids=None if tids is None else tids.long(),
                                         padding_idx=padding_idx)
    y64.backward(dy.double())

    assert y.shape == (b, l, h)
    _close("y", y.detach(), y64.detach())
    for name, w, r in zip(GRADS, weights, w64):
        _close(name, w.grad, r.grad)
    assert (weights[1].grad[l:] == 0).all(), "position rows past L got a gradient"
    if padding_idx is not None:
        assert (weights[0].grad[padding_idx] == 0).all(), "the padding row got a gradient"
    if tids is None:
        assert (weights[2].grad[1:] == 0).all(), "type rows other than 0 got a gradient without type_ids"
    return ids, weights


@pytest.mark.parametrize("b", [1, 7])
@pytest.mark.parametrize("l", [1, 7, 100, 257])
@pytest.mark.parametrize("h", [16, 128, 200])
def test_encoder_case_against_reference(b, l, h):
    """What the encoder calls: type_ids None, padding_idx 0, int64 ids; vocab 13, so ids repeat."""
    ids, weights = _run_case(b, l, h, padding_idx=0)
    if b * l >= 100:  # enough tokens that some id repeats and the padding id occurs
        assert ids.flatten().bincount().max() > 1 and (ids == 0).any()
        assert weights[0].grad[1:].abs().sum(1).gt(0).any()


PAPER_WIDTHS = tuple(range(16, 257, 16))  # the paper's model-wise grid: hidden 16, 32, ..., 256


@pytest.mark.parametrize("h", PAPER_WIDTHS)
def test_paper_hidden_sizes(h):
    """Every hidden size of the paper's model-wise grid, as the encoder calls it (padding_idx 0, no
    type_ids), forward and all five gradients: one token, and a sequence one past a position block
    (two position blocks, the second holding one row) over three batch rows."""
    _run_case(1, 1, h, padding_idx=0)
    _run_case(3, emb_mod._config(h)[1] + 1, h, padding_idx=0)


@pytest.mark.parametrize("h", [48, 80, 144, 208, 240])  # not powers of two: masked columns
def test_paper_hidden_sizes_with_type_ids(h):
    _run_case(3, 9, h, n_types=2, type_ids=True, id_dtype=torch.int32, seed=5)


@pytest.mark.parametrize("b,l,h", [(1, 1, 16), (7, 7, 128), (7, 100, 200), (3, 257, 16)])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_type_ids_against_reference(b, l, h, id_dtype):
    _run_case(b, l, h, n_types=3, type_ids=True, padding_idx=None, id_dtype=id_dtype, seed=1)


@pytest.mark.parametrize("padding_idx", [None, 5, -1])
def test_padding_idx(padding_idx):
    ids, weights = _run_case(7, 30, 48, vocab=11, padding_idx=padding_idx, id_dtype=torch.int32, seed=2)
    pad = None if padding_idx is None else padding_idx % 11
    assert pad is None or (ids == pad).any()
    if pad is None:  # every row that occurs gets a gradient
        assert weights[0].grad[ids.long().unique()].abs().sum(1).gt(0).all()


def test_repeated_ids_accumulate():
    """Every token the same id: the word gradient is the sum of all B*L row gradients (atomics)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.full((7, 33), 4, dtype=torch.int64)
    weights = [torch.randn(6, 40, generator=g), torch.randn(33, 40, generator=g), torch.randn(2, 40, generator=g),
               torch.randn(40, generator=g), torch.randn(40, generator=g)]
    weights = [w.requires_grad_() for w in weights]
    dy = torch.randn(7, 33, 40, generator=g)
    embedding_layer_norm(ids, *weights, 1e-5).backward(dy)
    w64 = [w.detach().double().requires_grad_() for w in weights]
    embedding_layer_norm_reference(ids, *w64, 1e-5).backward(dy.double())
    _close("dword", weights[0].grad, w64[0].grad)
    assert weights[0].grad[4].abs().max() > 1.0 and (weights[0].grad[torch.arange(6) != 4] == 0).all()
    # type row 0 collects every token, like the word row here
    _close("dtype", weights[2].grad, w64[2].grad)


def test_backward_grid_splits_positions_and_batch():
    """The cases above run several position blocks and several batch chunks, with a short last chunk."""
    assert emb_mod._bwd_grid(torch.device("cpu"), 7, 100, emb_mod._config(16)[1]) == (2, 4, 2)
    assert emb_mod._bwd_grid(torch.device("cpu"), 7, 7, emb_mod._config(128)[1]) == (1, 7, 1)


@pytest.mark.parametrize("h", [1, 4096])
def test_extreme_hidden_sizes(h):
    _run_case(3, 5, h, vocab=4, padding_idx=1, seed=4)


def test_empty_batch():
    _run_case(0, 5, 32)


def test_frozen_weights_get_no_gradient():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 9, (2, 6), generator=g)
    word = torch.randn(9, 24, generator=g, requires_grad=True)
    pos, typ = torch.randn(6, 24, generator=g), torch.randn(2, 24, generator=g)
    lw, lb = torch.ones(24), torch.zeros(24)
    embedding_layer_norm(ids, word, pos, typ, lw, lb).sum().backward()
    assert word.grad is not None and pos.grad is None and lw.grad is None


@pytest.mark.parametrize("eps", [1e-5, 0.3, 1.0, 4.0])
def test_eps_against_reference(eps):
    """eps where the reference puts it, inside the square root: the rows' variance is ~1.5, so at these
    eps 1/sqrt(var + eps) and, say, 1/(sqrt(var) + eps) differ by 10-60 %, in y and in every gradient."""
    _run_case(3, 7, 48, padding_idx=0, eps=eps, seed=8)
    _run_case(2, 5, 40, n_types=3, type_ids=True, eps=eps, seed=9)


def test_reference_is_bert_embeddings():
    """The spec against the modules BERT uses: nn.Embedding (padding_idx) x 3, summed, nn.LayerNorm."""
    g = torch.Generator().manual_seed(6)
    word = torch.nn.Embedding(20, 16, padding_idx=0, dtype=torch.float64)
    pos, typ = torch.nn.Embedding(10, 16, dtype=torch.float64), torch.nn.Embedding(2, 16, dtype=torch.float64)
    ln = torch.nn.LayerNorm(16, eps=1e-12, dtype=torch.float64)
    for m in (word, pos, typ, ln):
        for p in m.parameters():
            torch.nn.init.normal_(p, generator=g)
    ids, tids = torch.randint(0, 20, (3, 8), generator=g), torch.randint(0, 2, (3, 8), generator=g)
    positions = torch.arange(8).expand(3, 8)
    expected = ln(word(ids) + typ(tids) + pos(positions))
    got = embedding_layer_norm_reference(ids, word.weight, pos.weight, typ.weight, ln.weight, ln.bias, 1e-12,
                                         type_ids=tids, padding_idx=0)
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert (word.weight.grad[0] == 0).all()
    zeros = torch.zeros_like(tids)
    torch.testing.assert_close(
        embedding_layer_norm_reference(ids, word.weight, pos.weight, typ.weight, ln.weight, ln.bias, 1e-12),
        ln(word(ids) + typ(zeros) + pos(positions)))


def test_cpu_without_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setattr(emb_mod, "use_triton", lambda *t: False)
    ids, tids, weights, _ = _inputs(2, 5, 16, 7, 5, 2, True, torch.int64, seed=7)
    assert torch.equal(embedding_layer_norm(ids, *weights, 1e-12, type_ids=tids, padding_idx=1),
                       embedding_layer_norm_reference(ids, *weights, 1e-12, type_ids=tids, padding_idx=1))


def test_unsupported_inputs_raise_value_error():
    ids = torch.randint(0, 10, (2, 4))
    word, pos, typ = torch.randn(10, 8), torch.randn(6, 8), torch.randn(2, 8)
    lw, lb = torch.ones(8), torch.zeros(8)
    f = embedding_layer_norm
    with pytest.raises(ValueError, match="ids has dtype float32; supported: int64, int32"):
        f(ids.float(), word, pos, typ, lw, lb)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        f(ids[0], word, pos, typ, lw, lb)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(ValueError, match="word_weight has dtype .*; supported: float32"):
            f(ids, word.to(dtype), pos, typ, lw, lb)
        with pytest.raises(ValueError, match="ln_bias has dtype .*; supported: float32"):
            f(ids, word, pos, typ, lw, lb.to(dtype))
    with pytest.raises(ValueError, match="supported: 1 to 4096"):
        f(ids, torch.randn(10, 4097), torch.randn(6, 4097), torch.randn(2, 4097), torch.ones(4097),
          torch.zeros(4097))
    with pytest.raises(ValueError, match="pos_weight has shape"):
        f(ids, word, torch.randn(6, 9), typ, lw, lb)
    with pytest.raises(ValueError, match="sequence length 4 exceeds the 3 positions"):
        f(ids, word, pos[:3], typ, lw, lb)
    with pytest.raises(ValueError, match="ln_weight has shape"):
        f(ids, word, pos, typ, torch.ones(7), lb)
    with pytest.raises(ValueError, match="ln_weight must be a tensor"):
        f(ids, word, pos, typ, None, lb)
    with pytest.raises(ValueError, match="type_ids must be a tensor of ids' shape"):
        f(ids, word, pos, typ, lw, lb, type_ids=torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="supported: 1 to 16"):
        f(ids, word, pos, torch.randn(17, 8), lw, lb, type_ids=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="padding_idx 10 is unsupported"):
        f(ids, word, pos, typ, lw, lb, padding_idx=10)
    with pytest.raises(ValueError, match="ids out of range; supported: 0 to 9"):
        f(torch.full((2, 4), 10), word, pos, typ, lw, lb)
    with pytest.raises(ValueError, match="type_ids out of range; supported: 0 to 1"):
        f(ids, word, pos, typ, lw, lb, type_ids=torch.full((2, 4), 2))


def test_compile_specs_cover_every_dispatched_configuration():
    shipped = {(s.fn, s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.constexprs["HAS_TYPE_IDS"],
                s.signature["IDS"], s.num_warps) for s in emb_mod.compile_specs()}
    for n in list(range(1, 70)) + [127, 128, 129, 768, 1000, 2049, 4096]:
        for id_dtype, ids in ((torch.int64, "*i64"), (torch.int32, "*i32")):
            block_n, block_m, fwd_warps, bwd_warps = emb_mod._config(n, id_dtype)
            for fn, warps in ((emb_mod._emb_ln_fwd_kernel, fwd_warps), (emb_mod._emb_ln_bwd_kernel, bwd_warps)):
                for has_tids in (False, True):
                    assert (fn, block_m, block_n, has_tids, ids, warps) in shipped, n
