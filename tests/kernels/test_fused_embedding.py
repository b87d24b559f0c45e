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
from tests.kernels.launch_spy import LaunchSpy

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


def _bert_embeddings(g: torch.Generator):
    """BERT's embedding modules (vocab 20, 10 positions, 2 types, hidden 16, float64), weights ~ N(0, 1) from g:
    word (padding_idx 0), position and type nn.Embedding, and the nn.LayerNorm after their sum."""
    word = torch.nn.Embedding(20, 16, padding_idx=0, dtype=torch.float64)
    pos, typ = torch.nn.Embedding(10, 16, dtype=torch.float64), torch.nn.Embedding(2, 16, dtype=torch.float64)
    ln = torch.nn.LayerNorm(16, eps=1e-12, dtype=torch.float64)
    for m in (word, pos, typ, ln):
        for p in m.parameters():
            torch.nn.init.normal_(p, generator=g)
    return word, pos, typ, ln


def test_reference_is_bert_embeddings():
    """The spec against the modules BERT uses: nn.Embedding (padding_idx) x 3, summed, nn.LayerNorm."""
    g = torch.Generator().manual_seed(6)
    word, pos, typ, ln = _bert_embeddings(g)
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


# ---- packed runs: ids (R, B, L), tables (R, rows, H), LayerNorm (R, H); run r uses only run r's ----

def _strided(runs, shape, stride, offset, values):
    """``values`` (runs, *shape) placed at ``offset`` inside per-run slabs of ``stride`` elements of one
    NaN-filled flat leaf buffer, as the optimiser lays packed runs out: the run axis strided, each run's
    slice contiguous. Returns the view (a non-leaf; autograd.grad takes it)."""
    size = values[0].numel()
    buf = torch.full((runs * stride,), float("nan"), dtype=values.dtype)
    buf.view(runs, stride)[:, offset:offset + size].copy_(values.reshape(runs, size))
    buf.requires_grad_()
    return buf.view(runs, stride)[:, offset:offset + size].view(runs, *shape)


def _packed_inputs(runs, b, l, h, vocab, n_pos, n_types, type_ids, id_dtype, seed):
    g = torch.Generator().manual_seed(seed * 7919 + runs * 1009 + b * 131 + l * 17 + h)
    ids = torch.randint(0, vocab, (runs, b, l), generator=g).to(id_dtype)
    tids = torch.randint(0, n_types, (runs, b, l), generator=g).to(id_dtype) if type_ids else None
    values = [torch.randn(runs, vocab, h, generator=g), 0.5 * torch.randn(runs, n_pos, h, generator=g),
              0.5 * torch.randn(runs, n_types, h, generator=g), 1 + 0.5 * torch.randn(runs, h, generator=g),
              0.3 * torch.randn(runs, h, generator=g)]
    # each table in its own buffer with its own run stride (none equal to the table's size), so a
    # stride or table mixed up reads the wrong rows (or the NaN gaps)
    weights = [_strided(runs, v.shape[1:], v[0].numel() + 3 + 5 * k, 2 + k, v) for k, v in enumerate(values)]
    dy = torch.randn(runs, b, l, h, generator=g)
    return ids, tids, weights, dy


def _per_run_float64(ids, tids, weights, dy, eps, padding_idx):
    """Expected output and gradients, independently of the module: a loop over the runs of F.embedding
    and F.layer_norm in float64 on exactly the kernel's input values."""
    w64 = [w.detach().double().requires_grad_() for w in weights]
    word, pos, typ, lw, lb = w64
    ys = []
    for r in range(ids.shape[0]):
        t = typ[r][0] if tids is None else F.embedding(tids[r].long(), typ[r])
        z = F.embedding(ids[r].long(), word[r], padding_idx=padding_idx) + t + pos[r][:ids.shape[2]]
        ys.append(F.layer_norm(z, (word.shape[2],), lw[r], lb[r], eps))
    y64 = torch.stack(ys)
    y64.backward(dy.double())
    return y64.detach(), [w.grad for w in w64]


def _run_packed_case(runs, b, l, h, vocab=5, n_pos=None, n_types=2, type_ids=False, padding_idx=None,
                     id_dtype=torch.int64, eps=1e-12, seed=0):
    n_pos = n_pos or l + 3  # rows past L must get zero gradient
    ids, tids, weights, dy = _packed_inputs(runs, b, l, h, vocab, n_pos, n_types, type_ids, id_dtype, seed)
    y = embedding_layer_norm(ids, *weights, eps, type_ids=tids, padding_idx=padding_idx)
    grads = torch.autograd.grad(y, weights, dy)
    y64, ref = _per_run_float64(ids, tids, weights, dy, eps, padding_idx)
    assert y.shape == (runs, b, l, h)
    _close("y", y.detach(), y64)
    for name, gr, rf in zip(GRADS, grads, ref):
        _close(name, gr, rf)
    dword, dpos, dtype_ = grads[:3]
    for r in range(runs):  # exact zeros: rows run r does not use get nothing, from any run
        unused = torch.ones(vocab, dtype=torch.bool)
        unused[ids[r].long().unique()] = False
        assert (dword[r][unused] == 0).all(), f"run {r}: word rows it never used got a gradient"
    if padding_idx is not None:
        assert (dword[:, padding_idx] == 0).all(), "a padding row got a gradient"
    assert (dpos[:, l:] == 0).all(), "position rows past L got a gradient"
    if tids is None:
        assert (dtype_[:, 1:] == 0).all(), "type rows other than 0 got a gradient without type_ids"
    return ids, tids, weights, dy, y, grads


@pytest.mark.parametrize("runs", [1, 3])
@pytest.mark.parametrize("b,l,h", [(1, 1, 16), (3, 7, 200), (2, 17, 100), (3, 5, 7)])
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_packed_runs_against_per_run_embedding_layer_norm(runs, b, l, h, padding_idx):
    """What a packed encoder calls (type_ids None), with strided run axes, against a loop over the runs of
    F.embedding + F.layer_norm: y and all five gradients. (3, 7, 200): two batch chunks per run; (2, 17,
    100): two position blocks per run, the second holding one row; vocab 5, so ids repeat and 0 occurs."""
    ids, _, _, _, _, _ = _run_packed_case(runs, b, l, h, padding_idx=padding_idx)
    if b * l >= 14:  # every run has the padding id and a repeated id (the scatter must accumulate)
        assert all((ids[r] == 0).any() and ids[r].flatten().bincount().max() > 1 for r in range(runs))


@pytest.mark.parametrize("runs", [1, 3])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_packed_runs_with_type_ids(runs, id_dtype):
    _run_packed_case(runs, 3, 9, 48, n_types=3, type_ids=True, padding_idx=1, id_dtype=id_dtype, seed=1)


def test_packed_runs_match_solo_kernel_runs():
    """Each packed run is its solo run: y bitwise, the gradients to fp32 rounding (partial sums and atomics
    are grouped differently)."""
    ids, _, weights, dy, y, grads = _run_packed_case(3, 3, 17, 100, padding_idx=0, seed=2)
    for r in range(3):
        solo = [w[r].detach().clone().requires_grad_() for w in weights]
        yr = embedding_layer_norm(ids[r], *solo, 1e-12, padding_idx=0)
        yr.backward(dy[r])
        assert torch.equal(y[r], yr)
        for name, w, g in zip(GRADS, solo, grads):
            torch.testing.assert_close(g[r], w.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_packed_runs_in_one_flat_buffer():
    """The optimiser's layout: every table of run r in one slab, the runs one after another; the gradient
    of the flat buffer is the per-run gradients in their places."""
    g = torch.Generator().manual_seed(3)
    runs, vocab, h, n_pos, n_types = 3, 6, 24, 7, 2
    shapes = [(vocab, h), (n_pos, h), (n_types, h), (h,), (h,)]
    sizes = [torch.Size(s).numel() for s in shapes]
    slab = sum(sizes) + 5
    buf = torch.randn(runs, slab, generator=g).requires_grad_()
    views, offset = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(buf[:, offset:offset + size].view(runs, *shape))
        offset += size
    ids = torch.randint(0, vocab, (runs, 2, 5), generator=g)
    dy = torch.randn(runs, 2, 5, h, generator=g)
    y = embedding_layer_norm(ids, *views, 1e-12, padding_idx=0)
    (dbuf,) = torch.autograd.grad(y, buf, dy)
    y64, ref = _per_run_float64(ids, None, views, dy, 1e-12, 0)
    _close("y", y.detach(), y64)
    expected = torch.cat([r.reshape(runs, -1) for r in ref] + [torch.zeros(runs, 5, dtype=torch.float64)], 1)
    _close("dbuffer", dbuf, expected)


def test_packed_tables_are_read_in_place(monkeypatch):
    """The strided tables reach both kernels as they are (no copy), with their run strides."""
    fwd, bwd = LaunchSpy(emb_mod._emb_ln_fwd_kernel), LaunchSpy(emb_mod._emb_ln_bwd_kernel)
    monkeypatch.setattr(emb_mod, "_emb_ln_fwd_kernel", fwd)
    monkeypatch.setattr(emb_mod, "_emb_ln_bwd_kernel", bwd)
    _, _, weights, _, _, _ = _run_packed_case(3, 2, 5, 16, seed=4)
    (args, kwargs), = fwd.calls
    assert [a.data_ptr() for a in args[2:7]] == [w.data_ptr() for w in weights] and kwargs["PACKED"]
    assert list(args[-5:]) == [w.stride(0) for w in weights]
    assert [w.stride(0) for w in weights] == [83, 136, 45, 34, 39]  # none is the table's size
    (args, kwargs), = bwd.calls
    assert [a.data_ptr() for a in args[2:6]] == [w.data_ptr() for w in weights[:4]] and kwargs["PACKED"]
    assert list(args[-4:]) == [w.stride(0) for w in weights[:4]]


def test_packed_reference_is_bert_embeddings_per_run():
    g = torch.Generator().manual_seed(6)
    expected, tables = [], []
    ids, tids = torch.randint(0, 20, (2, 3, 8), generator=g), torch.randint(0, 2, (2, 3, 8), generator=g)
    for r in range(2):
        word, pos, typ, ln = _bert_embeddings(g)
        expected.append(ln(word(ids[r]) + typ(tids[r]) + pos(torch.arange(8).expand(3, 8))))
        tables.append((word.weight, pos.weight, typ.weight, ln.weight, ln.bias))
    stacked = [torch.stack(t) for t in zip(*tables)]
    got = embedding_layer_norm_reference(ids, *stacked, 1e-12, type_ids=tids, padding_idx=0)
    torch.testing.assert_close(got, torch.stack(expected))


def test_packed_cpu_without_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setattr(emb_mod, "use_triton", lambda *t: False)
    ids, _, weights, _ = _packed_inputs(2, 2, 5, 16, 7, 5, 2, False, torch.int64, seed=7)
    assert torch.equal(embedding_layer_norm(ids, *weights, 1e-12, padding_idx=1),
                       embedding_layer_norm_reference(ids, *weights, 1e-12, padding_idx=1))


def test_packed_empty_batch():
    _run_packed_case(3, 0, 5, 32)


def test_packed_unsupported_inputs_raise_value_error():
    ids = torch.randint(0, 10, (3, 2, 4))
    word, pos, typ = torch.randn(3, 10, 8), torch.randn(3, 6, 8), torch.randn(3, 2, 8)
    lw, lb = torch.ones(3, 8), torch.zeros(3, 8)
    f = embedding_layer_norm
    with pytest.raises(ValueError, match=r"ids must be a \(R, B, L\) tensor"):
        f(ids[0], word, pos, typ, lw, lb)
    with pytest.raises(ValueError, match="pos_weight must be a 3-D"):
        f(ids, word, pos[0], typ, lw, lb)
    with pytest.raises(ValueError, match=r"ln_weight has shape \(8,\); supported: \(3, 8\)"):
        f(ids, word, pos, typ, lw[0], lb)
    with pytest.raises(ValueError, match="same R >= 1 .* type_weight 2"):
        f(ids, word, pos, typ[:2], lw, lb)
    with pytest.raises(ValueError, match="same R >= 1 .* ids 2"):
        f(ids[:2], word, pos, typ, lw, lb)
    with pytest.raises(ValueError, match=r"ln_bias has shape \(2, 8\)"):
        f(ids, word, pos, typ, lw, lb[:2])
    with pytest.raises(ValueError, match="sequence length 4 exceeds the 3 positions"):
        f(ids, word, pos[:, :3], typ, lw, lb)
    with pytest.raises(ValueError, match="type_ids must be a tensor of ids' shape"):
        f(ids, word, pos, typ, lw, lb, type_ids=ids[0])
    with pytest.raises(ValueError, match="ids out of range; supported: 0 to 9"):
        f(torch.full((3, 2, 4), 10), word, pos, typ, lw, lb)


def test_packed_compile_specs_cover_every_dispatched_configuration():
    shipped = {(s.fn, s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.constexprs["HAS_TYPE_IDS"],
                s.constexprs["PACKED"], s.signature["IDS"], s.num_warps) for s in emb_mod.compile_specs()}
    for n in list(range(1, 70)) + [127, 128, 129, 768, 1000, 2049, 4096]:
        for id_dtype, ids in ((torch.int64, "*i64"), (torch.int32, "*i32")):
            for packed in (False, True):
                block_n, block_m, fwd_warps, bwd_warps = emb_mod._config(n, id_dtype, packed)
                for fn, warps in ((emb_mod._emb_ln_fwd_kernel, fwd_warps),
                                  (emb_mod._emb_ln_bwd_kernel, bwd_warps)):
                    for has_tids in (False, True):
                        assert (fn, block_m, block_n, has_tids, packed, ids, warps) in shipped, n


# --- the forward and backward alone (the trainer's deferred path: gradients into the optimiser's buffer) ---

def _split_case(runs, b, l, h, vocab, n_pos, padding_idx, type_ids, seed):
    """Inputs and float64 autograd's y and gradients, per run (independent of the module)."""
    if runs is None:
        ids, tids, weights, dy = _inputs(b, l, h, vocab, n_pos, 2, type_ids, torch.int64, seed)
        y64, ref = _per_run_float64(ids[None], None if tids is None else tids[None], [w[None] for w in weights],
                                    dy[None], 1e-12, padding_idx)
        return ids, tids, [w.detach() for w in weights], dy, y64[0], [r[0] for r in ref]
    ids, tids, weights, dy = _packed_inputs(runs, b, l, h, vocab, n_pos, 2, type_ids, torch.int64, seed)
    y64, ref = _per_run_float64(ids, tids, weights, dy, 1e-12, padding_idx)
    return ids, tids, [w.detach() for w in weights], dy, y64, ref


@pytest.mark.parametrize("interpret", [True, False], ids=["kernel", "cpu"])
@pytest.mark.parametrize("runs", [None, 3])
@pytest.mark.parametrize("type_ids", [False, True])
def test_forward_and_backward_alone(runs, type_ids, interpret, monkeypatch):
    if not interpret:
        monkeypatch.setattr(emb_mod, "use_triton", lambda *t: False)
    ids, tids, weights, dy, y64, ref = _split_case(runs, 3, 7, 40, 6, 10, 0, type_ids, seed=11)
    y, mean, rstd = emb_mod.embedding_layer_norm_forward(ids, *weights, 1e-12, type_ids=tids)
    _close("y", y, y64)
    assert mean.shape == rstd.shape == (ids.numel(),)
    grads = emb_mod.embedding_layer_norm_backward(dy, ids, *weights[:4], mean, rstd, type_ids=tids, padding_idx=0)
    for name, got, want in zip(GRADS, grads, ref):
        _close(name, got, want)


@pytest.mark.parametrize("interpret", [True, False], ids=["kernel", "cpu"])
@pytest.mark.parametrize("runs", [None, 3])
def test_backward_partials_and_word_gradient_into_a_given_buffer(runs, interpret, monkeypatch):
    """reduce=False: the partials summed give the position rows [0, L), type row 0 and the LayerNorm's
    gradients; the word gradient is added into ``dword`` -- here the optimiser's layout, each run's table a
    view of one flat row, holding a gradient already -- and nothing past it is touched."""
    if not interpret:
        monkeypatch.setattr(emb_mod, "use_triton", lambda *t: False)
    l, h, vocab = 9, 24, 5
    ids, _, weights, dy, _, ref = _split_case(runs, 4, l, h, vocab, 12, 0, False, seed=12)
    _, mean, rstd = emb_mod.embedding_layer_norm_forward(ids, *weights, 1e-12)
    g = torch.Generator().manual_seed(1)
    lead = () if runs is None else (runs,)
    flat = torch.randn(*lead, vocab * h + 7, generator=g)
    dword = flat[..., :vocab * h].view(*lead, vocab, h)
    before, tail = dword.clone(), flat[..., vocab * h:].clone()
    parts = emb_mod.embedding_layer_norm_backward(dy, ids, *weights[:4], mean, rstd, padding_idx=0, dword=dword,
                                                  reduce=False)
    assert parts.word is dword
    _close("dword", dword - before, ref[0])
    assert torch.equal(flat[..., vocab * h:], tail)
    k = 0 if runs is None else 1  # the axis the partials are summed over
    _close("dpos", parts.pos.sum(k), ref[1][..., :l, :])
    _close("dtype", parts.type0.sum(k), ref[2][..., 0, :])
    _close("dln_weight", parts.ln_weight.sum(k), ref[3])
    _close("dln_bias", parts.ln_bias.sum(k), ref[4])
    assert parts.pos.shape[-3:] == (parts.pos.shape[-3], l, h) and parts.type0.shape == parts.ln_bias.shape


def test_backward_alone_refuses_what_it_cannot_do():
    ids, tids, weights, dy = _inputs(2, 5, 16, 7, 5, 2, True, torch.int64, seed=3)
    weights = [w.detach() for w in weights]
    _, mean, rstd = emb_mod.embedding_layer_norm_forward(ids, *weights, 1e-12)
    f = emb_mod.embedding_layer_norm_backward
    with pytest.raises(ValueError, match="reduce=False needs type_ids=None"):
        f(dy, ids, *weights[:4], mean, rstd, type_ids=tids, reduce=False)
    with pytest.raises(ValueError, match=r"dy must be \(2, 5, 16\) and mean, rstd \(10,\)"):
        f(dy[:, :4], ids, *weights[:4], mean, rstd)
    with pytest.raises(ValueError, match=r"dword must be float32 \(7, 16\)"):
        f(dy, ids, *weights[:4], mean, rstd, dword=torch.zeros(16, 7).t())
    packed = [w[None].expand(3, *w.shape).contiguous() for w in weights[:4]]
    pids, pdy = ids[None].expand(3, -1, -1), dy[None].expand(3, -1, -1, -1)
    _, pmean, prstd = emb_mod.embedding_layer_norm_forward(pids, *packed, *[w[None].expand(3, -1).contiguous()
                                                                               for w in weights[4:]], 1e-12)
    with pytest.raises(ValueError, match="apart from the others"):  # every run adding into the same table
        f(pdy, pids, *packed, pmean, prstd, dword=torch.zeros(7, 16).expand(3, 7, 16))
