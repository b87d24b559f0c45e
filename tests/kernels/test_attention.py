"""kernels.fused_attention: the Triton kernels (run by Triton's interpreter on CPU) against the reference.

tests/conftest.py sets TRITON_INTERPRET=1 before ``kernels`` is imported, so ``attention`` on CPU
tensors runs the real Triton forward and backward kernels, and ``attention_reference`` (plain
PyTorch, fp32 math) is the spec. The reference itself is checked against
torch.nn.functional.scaled_dot_product_attention.

Shapes are small and parametrised by hand rather than as a full product: the interpreter runs
every tl.dot in numpy, and the file should take well under a minute on one core.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
import torch.utils._python_dispatch

from kernels import _dispatch
from kernels.fused_attention import attention, attention_reference

# Largest allowed |actual - expected| <= ATOL + RTOL * |expected|, per input dtype, for the
# output and for every gradient. fp32: the interpreter's dots are exact fp32, so only summation
# order differs. bf16/fp16: the output is rounded to the dtype (half an ulp: 2^-9 resp. 2^-12
# relative) and the probabilities and dS are rounded to it before their matmuls.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}

needs_interpreter = pytest.mark.skipif(not _dispatch.INTERPRET,
                                       reason="needs TRITON_INTERPRET=1 (set by tests/conftest.py)")


def _inputs(seed, B, H, Lq, Lk, D, dtype, mask_kind=None):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype).requires_grad_()
               for n in (Lq, Lk, Lk))
    mask = None
    if mask_kind is not None:
        mask = torch.rand(B, Lk, generator=g) > 0.4
        mask[:, 0] = True  # every row keeps a key ...
        if mask_kind == "empty_row":
            mask[0] = False  # ... except batch row 0, which has none
        if mask_kind == "gap":
            mask[:, 60:200] = True
            mask[:, 64:192] = False  # two whole key blocks of 64 skipped
    do = torch.randn(B, H, Lq, D, generator=g).to(dtype)
    return q, k, v, mask, do


def _run(fn, q, k, v, mask, causal, do, **kw):
    out = fn(q, k, v, mask, causal, **kw)
    grads = torch.autograd.grad(out, (q, k, v), do)
    return out, grads


def _assert_close(actual, expected, dtype, what):
    assert actual.dtype == expected.dtype == dtype, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    torch.testing.assert_close(actual.float(), expected.float(), **TOL[dtype], msg=lambda m: f"{what}: {m}")


# (seed, B, H, Lq, Lk, D, dtype, causal, mask_kind)
CASES = [
    (0, 2, 2, 1, 257, 32, torch.float32, False, None),        # one query: the last layer
    (1, 2, 2, 1, 100, 64, torch.bfloat16, False, "random"),
    (2, 1, 2, 1, 7, 128, torch.float16, True, None),          # causal with Lq=1 sees every key
    (3, 2, 2, 7, 7, 32, torch.float32, True, None),           # modular arithmetic, decoder
    (4, 1, 1, 100, 257, 16, torch.float32, False, "random"),
    (5, 1, 1, 257, 100, 32, torch.float16, True, None),       # Lq > Lk causal: empty leading rows
    (6, 2, 2, 100, 100, 64, torch.bfloat16, True, "random"),  # causal, Lq == Lk, with padding
    (7, 1, 1, 7, 100, 128, torch.float16, True, "random"),    # causal, Lq < Lk
    (8, 1, 2, 64, 64, 128, torch.float32, False, None),       # block-aligned
    (9, 1, 1, 33, 65, 16, torch.bfloat16, False, None),
    (10, 2, 1, 17, 1, 32, torch.float32, False, None),        # a single key
    (11, 1, 1, 100, 37, 64, torch.float16, False, "random"),
    (12, 2, 1, 20, 9, 128, torch.bfloat16, True, "empty_row"),
    (13, 1, 1, 1, 1024, 32, torch.float32, True, "random"),   # the longest supported key sequence
    (14, 2, 1, 16, 16, 32, torch.float16, True, None),        # largest Lq of the 16-row blocks
    (15, 2, 2, 70, 257, 32, torch.float32, False, "gap"),
    (16, 1, 1, 1, 257, 32, torch.bfloat16, False, "gap"),
]


# Head sizes that are not a power of two (the paper's model-wise grid: hidden 16..256 with 4 heads
# gives 4, 8, 12, ..., 64), padded inside the kernels to BLOCK_D = max(16, next_pow2(D)).
ODD_HEAD_CASES = [
    (20, 2, 2, 7, 7, 4, torch.float32, True, None),           # hidden 16, 4 heads: modular decoder
    (21, 2, 2, 1, 100, 12, torch.float32, False, "random"),
    (22, 2, 1, 33, 65, 12, torch.bfloat16, True, "random"),
    (23, 1, 2, 37, 37, 20, torch.float32, True, "random"),     # hidden 80 / 4 heads
    (24, 2, 1, 1, 257, 20, torch.float16, False, "gap"),
    (25, 1, 1, 100, 37, 44, torch.float32, True, "random"),    # causal, Lq > Lk: empty leading rows
    (26, 2, 1, 17, 100, 44, torch.float16, False, "random"),
    (27, 1, 2, 65, 33, 60, torch.float32, False, "random"),
    (28, 2, 1, 9, 9, 60, torch.bfloat16, True, None),
    (29, 1, 1, 45, 70, 100, torch.float32, True, "random"),
    (30, 1, 1, 7, 100, 100, torch.bfloat16, True, "random"),
    (31, 2, 1, 20, 9, 100, torch.float16, True, "empty_row"),
    (32, 2, 2, 9, 9, 1, torch.float32, False, "random"),       # the smallest head
    (33, 1, 1, 17, 33, 127, torch.float16, True, "random"),    # the largest odd one
    (34, 1, 1, 33, 17, 48, torch.float32, True, "random"),     # multiple of 16, not a power of two
]


@needs_interpreter
@pytest.mark.parametrize("seed,B,H,Lq,Lk,D,dtype,causal,mask_kind", CASES + ODD_HEAD_CASES,
                         ids=[f"Lq{c[3]}-Lk{c[4]}-D{c[5]}-{str(c[6])[6:]}-causal{int(c[7])}-{c[8]}"
                              for c in CASES + ODD_HEAD_CASES])
def test_forward_and_gradients_match_reference(seed, B, H, Lq, Lk, D, dtype, causal, mask_kind):
    q, k, v, mask, do = _inputs(seed, B, H, Lq, Lk, D, dtype, mask_kind)
    out, grads = _run(attention, q, k, v, mask, causal, do)
    assert type(out.grad_fn).__name__.startswith("_Attention"), "the Triton path did not run"
    ref, ref_grads = _run(attention_reference, q, k, v, mask, causal, do)
    _assert_close(out, ref, dtype, "out")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        _assert_close(g, rg, dtype, name)


@needs_interpreter
@pytest.mark.parametrize("D", [16, 32, 64, 128, 12, 20, 44, 100])
@pytest.mark.parametrize("dtype,precision",
                         [(torch.float32, "tf32x3"), (torch.float32, "tf32"), (torch.float16, "tf32")],
                         ids=["fp32-tf32x3", "fp32-tf32", "fp16"])
def test_every_tile_configuration(monkeypatch, D, dtype, precision):
    """Each (mode, BLOCK_D) has its own tiles; run each with both BLOCK_M classes (Lq <= 16 and > 16),
    at D = BLOCK_D and at a D that pads to it.
    The interpreter computes fp32 dots exactly whatever the precision, so fp32 tolerances hold."""
    import kernels.fused_attention as attention_module

    monkeypatch.setattr(attention_module, "_dot_precision", lambda _dtype: precision)
    for Lq, Lk in ((5, 37), (45, 70)):
        q, k, v, mask, do = _inputs(60 + D + Lq, 1, 1, Lq, Lk, D, dtype, "random")
        out, grads = _run(attention, q, k, v, mask, True, do)
        ref, ref_grads = _run(attention_reference, q, k, v, mask, True, do)
        _assert_close(out, ref, dtype, "out")
        for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
            _assert_close(g, rg, dtype, name)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_query_rows_without_keys_give_zeros_and_zero_gradients(dtype):
    # Batch row 0 has every key masked; with causal and Lq > Lk the first Lq - Lk queries of
    # every batch row see no key either.
    B, H, Lq, Lk, D = 2, 2, 40, 30, 32
    q, k, v, mask, do = _inputs(20, B, H, Lq, Lk, D, dtype, "empty_row")
    out, (dq, dk, dv) = _run(attention, q, k, v, mask, True, do)
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()
    assert (out[0] == 0).all() and (dq[0] == 0).all() and (dk[0] == 0).all() and (dv[0] == 0).all()
    assert (out[1, :, : Lq - Lk] == 0).all() and (dq[1, :, : Lq - Lk] == 0).all()
    assert out[1, :, Lq - Lk:].abs().amax(-1).gt(0).all()  # the others are computed
    # Masked-out keys get no gradient.
    assert (dk[1][:, ~mask[1]] == 0).all() and (dv[1][:, ~mask[1]] == 0).all()
    ref, ref_grads = _run(attention_reference, q, k, v, mask, True, do)
    _assert_close(out, ref, dtype, "out")
    for name, g, rg in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_grads):
        _assert_close(g, rg, dtype, name)


@needs_interpreter
@pytest.mark.parametrize("Lq,Lk,causal,D", [(100, 37, False, 32), (7, 65, True, 32), (37, 9, True, 20)])
def test_outputs_and_gradients_fully_written(monkeypatch, Lq, Lk, causal, D):
    """Every buffer the kernels write is allocated NaN-poisoned; none may survive."""
    allocated = []

    def poisoned_empty_like(t, *args, **kwargs):
        out = torch.full_like(t, float("nan"), *args, **kwargs)
        allocated.append(out)
        return out

    def poisoned_empty(*size, **kwargs):
        out = torch.full(size[0] if len(size) == 1 and not isinstance(size[0], int) else size,
                         float("nan"), **kwargs)
        allocated.append(out)
        return out

    monkeypatch.setattr(torch, "empty_like", poisoned_empty_like)
    monkeypatch.setattr(torch, "empty", poisoned_empty)
    q, k, v, mask, do = _inputs(30, 2, 1, Lq, Lk, D, torch.float32, "random")
    out, grads = _run(attention, q, k, v, mask, causal, do)
    # o, lse, delta, dq, dk, dv
    assert len(allocated) >= 6, "the kernels' buffers were not allocated through torch.empty*"
    monkeypatch.undo()
    for t in (out, *grads):
        assert not torch.isnan(t).any()
    ref, ref_grads = _run(attention_reference, q, k, v, mask, causal, do)
    _assert_close(out, ref, torch.float32, "out")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        _assert_close(g, rg, torch.float32, name)


def _nan_tailed(t):
    """t as the front of a longer buffer whose tail is NaN (returns the view and the buffer)."""
    big = torch.full((t.numel() + 256,), float("nan"), dtype=t.dtype)
    view = big[: t.numel()].view(t.shape)
    view.copy_(t.detach())
    return view, big


@needs_interpreter
@pytest.mark.parametrize("D,dtype", [(20, torch.float32), (12, torch.bfloat16), (1, torch.float16)])
def test_padded_head_lanes_are_never_loaded_or_stored(monkeypatch, D, dtype):
    """Every tensor the kernels read or write is the front of a longer buffer with a NaN tail.
    The padded lanes (d >= D) of a tile's last row lie in that tail (those of any other row lie in
    the next row). A load of one brings NaN into a dot product (NaN * 0 = NaN), which reaches the
    output or a gradient; a store of one overwrites the tail's NaN."""
    outputs = []
    real_empty_like = torch.empty_like

    def nan_tailed_empty_like(t, *args, **kwargs):
        view, big = _nan_tailed(real_empty_like(t, *args, **kwargs))
        outputs.append((big, view.numel()))
        return view

    q, k, v, mask, do = _inputs(35, 2, 2, 19, 23, D, dtype, "random")
    (q, _), (k, _), (v, _), (do, _) = (_nan_tailed(t) for t in (q, k, v, do))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    monkeypatch.setattr(torch, "empty_like", nan_tailed_empty_like)
    out, grads = _run(attention, q, k, v, mask, True, do)
    monkeypatch.undo()
    assert len(outputs) >= 5  # o, delta, dq, dk, dv
    for big, n in outputs:
        assert torch.isnan(big[n:]).all(), "a padded head lane was stored past the end of a buffer"
    ref, ref_grads = _run(attention_reference, q, k, v, mask, True, do)
    _assert_close(out, ref, dtype, "out")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        _assert_close(g, rg, dtype, name)


@needs_interpreter
def test_default_scale_is_one_over_sqrt_of_the_real_head_size():
    q, k, v, _, _ = _inputs(36, 1, 1, 5, 6, 20, torch.float32)
    out = attention(q, k, v)
    _assert_close(out, attention(q, k, v, sm_scale=20 ** -0.5), torch.float32, "out")
    assert not torch.allclose(out, attention(q, k, v, sm_scale=32 ** -0.5), atol=1e-4)


@needs_interpreter
def test_non_contiguous_inputs_and_custom_scale():
    g = torch.Generator().manual_seed(40)
    B, L, H, D = 2, 19, 2, 16
    # (B, L, H, D) projections viewed as (B, H, L, D): the layout a model produces.
    q, k, v = (torch.randn(B, L, H, D, generator=g).transpose(1, 2).requires_grad_() for _ in range(3))
    assert not q.is_contiguous()
    do = torch.randn(B, L, H, D, generator=g).transpose(1, 2)
    out, grads = _run(attention, q, k, v, None, False, do, sm_scale=0.3)
    ref, ref_grads = _run(attention_reference, q, k, v, None, False, do, sm_scale=0.3)
    _assert_close(out, ref, torch.float32, "out")
    for name, gr, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        _assert_close(gr, rg, torch.float32, name)
        assert gr.shape == (B, H, L, D)
    # And the scale is really applied: the default 1/sqrt(16) gives something else.
    assert not torch.allclose(out, attention(q, k, v))


def _interleaved(t):
    """t (B, H, L, D) as the view of a contiguous (B, L, H, D) tensor: a projection split into heads."""
    return t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(t.requires_grad)


class _CopyCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """The copies PyTorch makes (clone, copy_) outside the kernels (the interpreter's own, which move a
    kernel's tensors in and out of numpy, are not counted)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.copies, self.inside = [], 0
        from triton.runtime import interpreter

        run = interpreter.InterpretedFunction.run

        def uncounted(fn, *args, **kwargs):
            self.inside += 1
            try:
                return run(fn, *args, **kwargs)
            finally:
                self.inside -= 1

        monkeypatch.setattr(interpreter.InterpretedFunction, "run", uncounted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside and func.overloadpacket.__name__ in ("clone", "copy_"):
            self.copies.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@needs_interpreter
@pytest.mark.parametrize("Lq,Lk,D,dtype,q_side,do_side,causal", [
    (9, 9, 32, torch.float32, "interleaved", "interleaved", True),   # a full layer
    (1, 7, 32, torch.float32, "interleaved", "interleaved", True),   # the readout row of a decoder
    (1, 70, 16, torch.bfloat16, "contiguous", "interleaved", False),  # the readout row of an encoder
    (19, 33, 64, torch.float32, "contiguous", "interleaved", False),  # mixed sides; dO must be copied
    (19, 33, 16, torch.float32, "interleaved", "contiguous", True),   # dO must be copied
    (5, 6, 20, torch.float32, "interleaved", "interleaved", False),   # padded head: copied contiguous
])
def test_heads_interleaved_in_the_rows_are_read_in_place(monkeypatch, Lq, Lk, D, dtype, q_side, do_side,
                                                           causal):
    """k, v (and q) as a model makes them, (B, L, H * D) rows viewed as heads: the kernels read them,
    and write o and the gradients, in that layout -- no copy either way when D is a power of two >= 16
    and dO arrives in q's layout -- and the values match the reference."""
    B, H = 2, 3
    q, k, v, mask, do = _inputs(80 + Lq, B, H, Lq, Lk, D, dtype, "random")
    k, v = _interleaved(k), _interleaved(v)
    if q_side == "interleaved":
        q = _interleaved(q)
    if do_side == "interleaved":
        do = _interleaved(do)
    even = D in (16, 32, 64, 128)
    with _CopyCounter(monkeypatch) as counter:
        out, grads = _run(attention, q, k, v, mask, causal, do)
    ref, ref_grads = _run(attention_reference, q, k, v, mask, causal, do)
    _assert_close(out, ref, dtype, "out")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        _assert_close(g, rg, dtype, name)
    if even and Lk > 1:
        assert grads[1].transpose(1, 2).is_contiguous() and grads[2].transpose(1, 2).is_contiguous()
    if even and Lq > 1 and q_side == "interleaved":
        assert out.transpose(1, 2).is_contiguous() and grads[0].transpose(1, 2).is_contiguous()
    copy_do = even and Lq > 1 and (q_side != do_side)
    assert len(counter.copies) == (int(copy_do) if even else len(counter.copies)), counter.copies
    if not even:
        assert counter.copies  # a padded head's interleaved tensors are copied


# -- Launch grids within CUDA's limits ---------------------------------------------------------------

# CUDA's launch-grid limits (x, y, z). The interpreter enforces none of them, so the tests record
# every grid the kernels are launched with and check it against these.
CUDA_MAX_GRID = (2**31 - 1, 65535, 65535)


@contextlib.contextmanager
def _recorded_launches(monkeypatch, execute):
    """Record (kernel name, 3-d grid) of every interpreter launch; run it only if ``execute``.

    It patches InterpretedFunction.run, which every launch reaches (``kernel[grid](...)`` and a
    direct ``.run``), so no launch path of the attention module can bypass it."""
    from triton.runtime import interpreter

    launches = []
    original = interpreter.InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        resolved = tuple(grid(kwargs) if callable(grid) else grid)
        launches.append((self.__name__, resolved + (1,) * (3 - len(resolved))))
        if execute:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", run)
    try:
        yield launches
    finally:
        monkeypatch.undo()


ATTN_KERNELS = {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"}


@needs_interpreter
def test_grid_recorder_sees_the_real_launches(monkeypatch):
    """The recorder below is trustworthy: with it in place the kernels still run and match the
    reference, and it sees all three kernels, each over every (batch, head) pair."""
    B, H, Lq, Lk = 3, 2, 37, 70
    q, k, v, mask, do = _inputs(70, B, H, Lq, Lk, 32, torch.float32, "random")
    with _recorded_launches(monkeypatch, execute=True) as launches:
        out, grads = _run(attention, q, k, v, mask, True, do)
    assert {name for name, _ in launches} == ATTN_KERNELS
    assert all(math.prod(grid) >= B * H for _, grid in launches)
    ref, ref_grads = _run(attention_reference, q, k, v, mask, True, do)
    _assert_close(out, ref, torch.float32, "out")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        _assert_close(g, rg, torch.float32, name)


@needs_interpreter
@pytest.mark.parametrize("Lq,Lk", [(1, 9), (70, 33)])
def test_launch_grids_within_cuda_limits_above_65535_batch_heads(monkeypatch, Lq, Lk):
    """B*H = 65,540 (an eval batch of 16,385 with 4 heads): a grid axis y or z above 65,535 is
    "invalid argument" on a GPU. The interpreter would take hours over that many programs, so
    the grids are recorded without running the kernels (the test above shows the recorder sees
    the real launches)."""
    B, H, D = 16385, 4, 16
    q, k, v = (torch.zeros(B, H, n, D, requires_grad=True) for n in (Lq, Lk, Lk))
    mask = torch.ones(B, Lk, dtype=torch.bool)
    with _recorded_launches(monkeypatch, execute=False) as launches:
        out = attention(q, k, v, mask, causal=True)
        out.backward(torch.zeros_like(out))
    # one query block per (batch, head) (Lq <= 16): the dQ kernel writes dK and dV too
    assert {name for name, _ in launches} == (ATTN_KERNELS if Lq > 16 else ATTN_KERNELS - {"_attn_bwd_dkdv"})
    for name, grid in launches:
        assert math.prod(grid) >= B * H, (name, grid)
        assert all(n <= limit for n, limit in zip(grid, CUDA_MAX_GRID)), (name, grid, CUDA_MAX_GRID)


# -- The reference against PyTorch's own attention ------------------------------------------------


def _sdpa(q, k, v, mask, causal):
    Lq, Lk = q.shape[-2], k.shape[-2]
    vis = torch.ones(Lq, Lk, dtype=torch.bool)
    if causal:  # bottom-right aligned; SDPA's is_causal is top-left, so build it explicitly
        vis = torch.ones(Lq, Lk, dtype=torch.bool).tril(diagonal=Lk - Lq)
    attn_mask = vis if mask is None else vis & mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


@pytest.mark.parametrize("seed,Lq,Lk,causal,masked", [
    (50, 1, 9, False, True), (51, 13, 13, True, False), (52, 5, 23, True, True), (53, 23, 5, False, True),
])
def test_reference_matches_sdpa(seed, Lq, Lk, causal, masked):
    q, k, v, mask, do = _inputs(seed, 3, 2, Lq, Lk, 16, torch.float64,
                                "random" if masked else None)
    ref, ref_grads = _run(attention_reference, q, k, v, mask, causal, do)
    sdpa, sdpa_grads = _run(_sdpa, q, k, v, mask, causal, do)
    # The reference computes in fp32 whatever the input; SDPA here in fp64.
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref, sdpa, **tol)
    for g, sg in zip(ref_grads, sdpa_grads):
        torch.testing.assert_close(g, sg, **tol)


def test_reference_causal_with_equal_lengths_is_sdpa_is_causal():
    q, k, v, _, _ = _inputs(54, 1, 2, 11, 11, 32, torch.float32)
    torch.testing.assert_close(attention_reference(q, k, v, causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=1e-6)


def test_reference_rows_without_keys_are_zero_with_finite_gradients():
    q, k, v, mask, do = _inputs(55, 2, 1, 6, 4, 16, torch.float32, "empty_row")
    out, grads = _run(attention_reference, q, k, v, mask, True, do)
    assert (out[0] == 0).all() and (out[1, :, :2] == 0).all()
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][0] == 0).all()


def test_cpu_without_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setattr(_dispatch, "INTERPRET", False)
    q, k, v, mask, _ = _inputs(56, 2, 1, 5, 9, 16, torch.float32, "random")
    out = attention(q, k, v, mask, causal=True)
    assert out.grad_fn is not None and not type(out.grad_fn).__name__.startswith("_Attention")
    torch.testing.assert_close(out, attention_reference(q, k, v, mask, causal=True), atol=0, rtol=0)


def test_fp32_dot_precision_follows_torch_tf32_switch():
    from kernels.fused_attention import _dot_precision

    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert _dot_precision(torch.float32) == "tf32x3"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert _dot_precision(torch.float32) == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_compile_specs_cover_every_launch_configuration():
    """Every configuration the launcher can pick is one that compile_specs() ships (and so is
    compiled for sm_80 and sm_90 by the compile test), and every kernel uses the tensor cores. (An
    even head's row strides are shipped at one value, _spec_rows: see there.)"""
    from kernels.fused_attention import (MAX_HEAD_DIM, SUPPORTED_DTYPES, _block_config, _block_d, _kind_constexprs,
                                         _mode, _spec_rows, compile_specs)

    shipped = {(s.fn.__name__, tuple(sorted(s.constexprs.items())), s.num_warps, s.num_stages)
               for s in compile_specs()}
    assert {_block_d(d) for d in range(1, MAX_HEAD_DIM + 1)} == {16, 32, 64, 128}
    for d in range(1, MAX_HEAD_DIM + 1):
        for dtype in SUPPORTED_DTYPES:
            for prec in (("tf32x3", "tf32") if dtype == torch.float32 else ("tf32",)):
                for kind in ("fwd", "dkdv", "dq", "dqkv"):
                    for lq in (1, 7, 16, 17, 256, 1024):
                        if kind == "dqkv" and lq > 16:  # (the backward launches it for Lq <= 16 only)
                            continue
                        block_d = _block_d(d)
                        cfg = _block_config(kind, block_d, d == block_d, _mode(dtype, prec), lq)
                        constexprs = {"BLOCK_D": block_d, "EVEN_D": d == block_d, "DOT_PRECISION": prec,
                                      **_spec_rows(block_d, d == block_d), **_kind_constexprs(kind),
                                      "UPCAST": False, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]}
                        key = ("_attn_" + ("bwd_" if kind != "fwd" else "") + kind.replace("dqkv", "dq"),
                               tuple(sorted(constexprs.items())), cfg["num_warps"], cfg["num_stages"])
                        assert key in shipped, key
    assert all(s.tensor_cores for s in compile_specs())


# -- Validation -----------------------------------------------------------------------------------


def _qkv(B=1, H=1, Lq=4, Lk=4, D=16, dtype=torch.float32, device="cpu"):
    return (torch.zeros(B, H, Lq, D, dtype=dtype, device=device),
            torch.zeros(B, H, Lk, D, dtype=dtype, device=device),
            torch.zeros(B, H, Lk, D, dtype=dtype, device=device))


@pytest.mark.parametrize("kwargs,match", [
    (dict(dtype=torch.float64), "supported: float32, bfloat16, float16"),
    (dict(dtype=torch.int32), "supported: float32"),
    (dict(D=0), "supported: 1 to 128"),
    (dict(D=129), "supported: 1 to 128"),
    (dict(D=256), "supported: 1 to 128"),
    (dict(Lk=1025), "supported: 1 to 1024"),
    (dict(Lq=0), "supported: 1 to 1024"),
    (dict(device="meta"), "supported: cuda"),
    (dict(B=2**29, H=4, Lq=1, Lk=1, device="meta"), r"B\*H = 2147483648 .* up to 2147483647"),
])
def test_unsupported_inputs_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention(*_qkv(**kwargs))


def test_inconsistent_shapes_and_bad_masks_raise_value_error():
    q, k, v = _qkv(B=2, Lq=3, Lk=5)
    with pytest.raises(ValueError, match=r"\(B, H, Lk, D\)"):
        attention(q, k[:, :, :4], v)
    with pytest.raises(ValueError, match=r"\(B, H, Lk, D\)"):
        attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"\(B, H, L, D\)"):
        attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="share one dtype"):
        attention(q, k.half(), v.half())
    with pytest.raises(ValueError, match=r"shape \(B, Lk\)"):
        attention(q, k, v, key_padding_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(B, Lk\)"):
        attention(q, k, v, key_padding_mask=torch.ones(2, 1, 1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        attention(q, k, v, key_padding_mask=torch.ones(2, 5))
