"""The kernels and the Triton backend on a real GPU, against their references.

Skipped without CUDA, and under TRITON_INTERPRET=1 (the CPU suite's setting). On a GPU machine
run ``scripts/gpu_check.sh``, which sets TRITON_INTERPRET=0 and runs this file and the benchmarks.
"""

import pytest
import torch

import kernels
from kernels._dispatch import INTERPRET

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                                reason="needs CUDA and TRITON_INTERPRET unset")

# fp32 runs tf32x3 on tensor cores (see kernels/README.md), hence looser than the interpreter's 1e-5.
ATTN_TOL = {torch.float32: 2e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,H,Lq,Lk,D,causal", [(128, 4, 256, 256, 32, False), (128, 4, 1, 256, 32, False),
                                                (3, 2, 7, 257, 64, True), (2, 3, 100, 100, 128, True),
                                                (4, 4, 4, 4, 16, True), (1, 1, 1000, 1024, 64, False)])
def test_attention_matches_reference(dtype, B, H, Lq, Lk, D, causal):
    g = torch.Generator(device="cuda").manual_seed(Lq * 1000 + Lk)
    q, k, v, do = (torch.randn(B, H, n, D, device="cuda", generator=g, dtype=dtype)
                   for n in (Lq, Lk, Lk, Lq))
    mask = torch.rand(B, Lk, device="cuda", generator=g) > 0.2
    mask[:, 0] = True
    outs = []
    for fn in (kernels.attention, kernels.attention_reference):
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qi, ki, vi, key_padding_mask=mask, causal=causal)
        out.backward(do)
        outs.append([out, qi.grad, ki.grad, vi.grad])
    for name, a, b in zip(("out", "dq", "dk", "dv"), *outs):
        torch.testing.assert_close(a.float(), b.float(), atol=ATTN_TOL[dtype], rtol=ATTN_TOL[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,H,Lq,Lk,D,causal", [(128, 4, 256, 256, 32, False), (128, 4, 1, 256, 32, False),
                                                (512, 4, 1, 7, 32, True), (3, 2, 70, 70, 64, True)])
def test_attention_reads_heads_interleaved_in_the_rows(dtype, B, H, Lq, Lk, D, causal):
    """q, k, v as the models make them -- (B, L, H * D) projections viewed as heads -- read in place,
    the output and gradients written in that layout, and equal to the reference."""
    g = torch.Generator(device="cuda").manual_seed(B + Lq)
    q, k, v, do = (torch.randn(B, n, H, D, device="cuda", generator=g, dtype=dtype).transpose(1, 2)
                   for n in (Lq, Lk, Lk, Lq))
    outs = []
    for fn in (kernels.attention, kernels.attention_reference):
        qi, ki, vi = (t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in (q, k, v))
        out = fn(qi, ki, vi, causal=causal)
        out.backward(do)
        outs.append([out, qi.grad, ki.grad, vi.grad])
    assert outs[0][2].transpose(1, 2).is_contiguous()  # dk in k's layout
    for name, a, b in zip(("out", "dq", "dk", "dv"), *outs):
        torch.testing.assert_close(a.float(), b.float(), atol=ATTN_TOL[dtype], rtol=ATTN_TOL[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,n", [(32768, 128), (7, 257), (1, 4096)])
def test_layer_norm_matches_reference(dtype, rows, n):
    x, r = (torch.randn(rows, n, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    w = torch.randn(n, device="cuda", requires_grad=True)
    b = torch.randn(n, device="cuda", requires_grad=True)
    dy = torch.randn(rows, n, device="cuda", dtype=dtype)
    results = []
    for fn in (kernels.layer_norm, kernels.layer_norm_reference):
        for t in (x, r, w, b):
            t.grad = None
        fn(x, w, b, 1e-12, residual=r).backward(dy)
        results.append([t.grad.clone() for t in (x, r, w, b)])
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for a, bb in zip(*results):
        torch.testing.assert_close(a.float(), bb.float(), atol=tol * max(1, bb.abs().max().item()), rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(512, 117), (2873, 117), (128, 2), (64, 512, 117), (8, 128, 2), (5, 3000)])
def test_cross_entropy_matches_reference(dtype, shape):
    """Loss, gradient and sums against the float64 reference; argmax ties to the lowest class (which the
    interpreter cannot check); the same bits on every call (the run's last program sums the partials in a
    fixed order); the counter that picks that program reused and left zero by every call, as the trainer's
    meter keeps it; and the sums set, not added, into strided rows (a one-chunk evaluation's result)."""
    g = torch.Generator(device="cuda").manual_seed(shape[-2])
    logits = (torch.randn(shape, device="cuda", generator=g) * 3).to(dtype)
    logits[..., :7, :] = 1.0  # ties everywhere in these rows: predicted class 0
    targets = torch.randint(0, shape[-1], shape[:-1], device="cuda", generator=g)
    targets[..., :3] = 0
    targets[..., 3:7] = 1
    weight = torch.rand(shape[:-1], device="cuda", generator=g)
    weight[..., ::5] = 0
    runs = shape[:-2]
    got = []
    counter = torch.zeros(max((1, *runs)), dtype=torch.int32, device="cuda")
    for _ in range(2):
        x = logits.clone().requires_grad_()
        sums = torch.zeros(*runs, 3, dtype=torch.float64, device="cuda")
        loss = kernels.cross_entropy(x, targets, weight, sums, counter=counter)
        loss.backward(torch.ones_like(loss))
        got.append((loss.detach(), x.grad, sums))
    for a, b in zip(*got):
        assert torch.equal(a, b)
    assert counter.abs().sum().item() == 0
    wide = torch.full((*runs, 5), float("nan"), dtype=torch.float64, device="cuda")
    with torch.no_grad():
        kernels.cross_entropy(logits, targets, weight, wide[..., 1:4], accumulate=False, counter=counter)
    torch.testing.assert_close(wide[..., 1:4], got[0][2], rtol=1e-12, atol=0)
    assert torch.isnan(wide[..., 0]).all() and torch.isnan(wide[..., 4]).all() and counter.abs().sum().item() == 0
    x64 = logits.double().cpu().requires_grad_()
    sums64 = torch.zeros(*runs, 3, dtype=torch.float64)
    ref = kernels.cross_entropy_reference(x64, targets.cpu(), weight.cpu(), sums64)
    ref.backward(torch.ones_like(ref))
    loss, grad, sums = got[0]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(loss.double().cpu(), ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(grad.double().cpu(), x64.grad, rtol=tol, atol=tol * x64.grad.abs().max().item())
    torch.testing.assert_close(sums.cpu()[..., 0], sums64[..., 0], rtol=tol, atol=0)
    assert torch.equal(sums.cpu()[..., 1:], sums64[..., 1:])


def test_embedding_layer_norm_matches_reference():
    g = torch.Generator(device="cuda").manual_seed(3)
    V, L, H = 30522, 256, 128
    ids = torch.randint(0, V, (128, L), device="cuda", generator=g)
    ids[:, -40:] = 0  # padding
    params = [torch.randn(*shape, device="cuda", generator=g) * 0.2 for shape in ((V, H), (L, H), (2, H), (H,), (H,))]
    dy = torch.randn(128, L, H, device="cuda", generator=g)
    results = []
    for fn in (kernels.embedding_layer_norm, kernels.embedding_layer_norm_reference):
        ps = [p.clone().requires_grad_() for p in params]
        fn(ids, *ps, eps=1e-12, padding_idx=0).backward(dy)
        results.append([p.grad for p in ps])
    for a, b in zip(*results):  # atomics reorder fp32 sums of up to 128*256 rows
        torch.testing.assert_close(a, b, atol=1e-3 * max(1, b.abs().max().item()), rtol=1e-4)


def test_embedding_backward_partials_into_the_buffer_and_the_weight_grad_launch():
    # the trainer's deferred encoder path at the paper's shape: the word gradient added into a view of a flat
    # buffer, the position / type / LayerNorm partials summed by the weight-gradient launch with zero tails,
    # against float64 autograd through the reference
    g = torch.Generator(device="cuda").manual_seed(5)
    V, P, L, H = 30522, 512, 256, 128
    ids = torch.randint(1, V, (128, L), device="cuda", generator=g)
    ids[:, -40:] = 0
    word, pos, typ = (torch.randn(n, H, device="cuda", generator=g) * 0.2 for n in (V, P, 2))
    lw, lb = 1 + 0.1 * torch.randn(H, device="cuda", generator=g), torch.zeros(H, device="cuda")
    dy = torch.randn(128, L, H, device="cuda", generator=g)
    _, mean, rstd = kernels.embedding_layer_norm_forward(ids, word, pos, typ, lw, lb, 1e-12)
    leaves = [t.double().requires_grad_() for t in (word, pos, typ, lw, lb)]
    want = torch.autograd.grad(kernels.embedding_layer_norm_reference(ids, *leaves, 1e-12, padding_idx=0), leaves,
                               dy.double())
    flat = torch.full((V * H + P * H + 2 * H + 2 * H + 3,), float("nan"), device="cuda")
    views, at = [], 0
    for shape in ((V, H), (P, H), (2, H), (H,), (H,)):
        views.append(flat[at:at + torch.Size(shape).numel()].view(shape))
        at += views[-1].numel()
    parts = kernels.embedding_layer_norm_backward(dy, ids, word, pos, typ, lw, mean, rstd, padding_idx=0,
                                                  dword=views[0].zero_(), reduce=False)
    kernels.linear_weight_grads([kernels.WeightGrad(None, part, None, view.view(-1)) for part, view in
                                 zip((parts.pos.flatten(-2), parts.type0, parts.ln_weight, parts.ln_bias), views[1:])])
    for name, a, b in zip(("word", "pos", "type", "ln_weight", "ln_bias"), views, want):
        torch.testing.assert_close(a.double(), b, atol=1e-3 * max(1, b.abs().max().item()), rtol=1e-4, msg=name)
    assert torch.isnan(flat[-3:]).all()  # nothing past the buffer's views written


@pytest.mark.parametrize("length,width", [(7, 2873), (256, 4096)])
def test_draw_batch_matches_reference_over_many_calls_and_graph_replays(length, width):
    # thousands of programs race for the last ticket: no program may read an offset after it moved,
    # and the counter must be back at 0 for every next call (eager, then replayed from a graph)
    g = torch.Generator().manual_seed(4)
    sizes = [3000, 2873, 4100]
    perm = torch.stack([torch.cat([torch.randperm(n, generator=g), torch.zeros(4100 - n, dtype=torch.long)])
                        for n in sizes]).cuda()
    x = torch.randint(0, 30000, (sum(sizes), length), generator=g).cuda()
    y = torch.randint(0, 2, (sum(sizes),), generator=g).cuda()
    mask = (torch.rand(sum(sizes), length, generator=g) > 0.3).cuda()
    n, batch = torch.tensor(sizes).cuda(), torch.tensor([width, 1000, 333]).cuda()
    base = torch.tensor([0, sizes[0], sizes[0] + sizes[1]]).cuda()
    o_kernel, o_ref = torch.tensor([5, 2872, 0]).cuda(), torch.tensor([5, 2872, 0]).cuda()
    counter = torch.zeros(1, dtype=torch.int32, device="cuda")

    def check():
        want = kernels.draw_batch_reference(perm, o_ref, n, batch, width, x, y, mask, base)
        for a, b in zip(out, want):
            assert torch.equal(a, b)
        assert torch.equal(o_kernel, o_ref) and counter.item() == 0

    for _ in range(20):
        out = kernels.draw_batch(perm, o_kernel, n, batch, width, x, y, mask, base, counter)
        check()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.draw_batch(perm, o_kernel, n, batch, width, x, y, mask, base, counter)
    for _ in range(20):
        graph.replay()
        check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_weight_grads_match_reference_at_the_step_shapes(dtype):
    # the modular step's layers (q/o/head at 512 readout rows, k/v at 3,072 positions, the FFN), the
    # IMDB head's 2 classes, and a pack's (R, N, K) layer; fp32 runs tf32x3 on tensor cores
    g = torch.Generator(device="cuda").manual_seed(5)
    shapes = [(None, 3072, 128, 128), (None, 512, 128, 512), (None, 512, 512, 128), (None, 512, 128, 117),
              (None, 128, 128, 2), (4, 512, 128, 128)]
    problems, want = [], []
    for i, (runs, m, k, n) in enumerate(shapes):
        lead = () if runs is None else (runs,)
        x = torch.randn(*lead, m, k, device="cuda", generator=g).to(dtype)
        dy = torch.randn(*lead, m, n, device="cuda", generator=g).to(dtype)
        dw, db = torch.randn(*lead, n, k, device="cuda", generator=g), torch.randn(*lead, n, device="cuda", generator=g)
        db = None if i == 3 else db  # the tied head has no bias
        problems.append(kernels.WeightGrad(x, dy, dw, db, i % 2 == 1))
        want.append(kernels.WeightGrad(x.double(), dy.double(), dw.double(), None if db is None else db.double(),
                                       i % 2 == 1))
    # LayerNorm partial sums (fp32 whatever the products' dtype): an H100's 528 programs' (P, 128), a pack's
    for lead, m in (((), 528), ((4,), 132)):
        part = torch.randn(*lead, m, 128, device="cuda", generator=g)
        db = torch.randn(*lead, 128, device="cuda", generator=g)
        problems.append(kernels.WeightGrad(None, part, None, db))
        want.append(kernels.WeightGrad(None, part.double(), None, db.double()))
    kernels.linear_weight_grads_reference(want)
    kernels.linear_weight_grads(problems)
    for got, ref in zip(problems, want):
        for a, b in ((got.dw, ref.dw), (got.db, ref.db)):
            if b is not None:
                assert (a.double() - b).abs().max().item() <= 5e-5 * max(1.0, b.abs().max().item())


def test_split_weight_grads_repeat_to_the_bit_whichever_program_is_last():
    # the paper's full-batch modular k projection: 17,238 rows, so each of the 16 tiles' rows split among 68
    # programs; the tile's last ticket sums their partials in split order, so five launches give the same bits
    g = torch.Generator(device="cuda").manual_seed(9)
    x = torch.randn(17238, 128, device="cuda", generator=g)
    dy = torch.randn(17238, 128, device="cuda", generator=g)
    outs = []
    for _ in range(5):
        dw, db = torch.empty(128, 128, device="cuda"), torch.empty(128, device="cuda")
        kernels.linear_weight_grads([kernels.WeightGrad(x, dy, dw, db)])
        outs.append((dw, db))
    assert all(torch.equal(a, outs[0][0]) and torch.equal(b, outs[0][1]) for a, b in outs[1:])
    want = dy.double().t() @ x.double()
    assert (outs[0][0].double() - want).abs().max().item() <= 5e-5 * want.abs().max().item()
    torch.testing.assert_close(outs[0][1].double(), dy.double().sum(0), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_matches_reference_at_the_step_shapes(dtype):
    # the modular step's products (k/v at 3,072 positions, the FFN with its GELU, the tied head), a 64-run
    # pack's k/v projection, and the IMDB k/v projection; fp32 runs tf32x3 on tensor cores
    g = torch.Generator(device="cuda").manual_seed(6)
    tol = 5e-5 if dtype == torch.float32 else 1e-2
    for runs, m, k, n in [(None, 3072, 128, 128), (None, 512, 128, 512), (None, 512, 128, 117), (64, 3072, 128, 128),
                          (None, 32768, 128, 128)]:
        lead = () if runs is None else (runs,)
        x = torch.randn(*lead, m, k, device="cuda", generator=g).to(dtype)
        w = torch.randn(*lead, n, k, device="cuda", generator=g).to(dtype)
        b = torch.randn(*lead, n, device="cuda", generator=g)
        want = x.double() @ w.double().transpose(-1, -2) + b.double().unsqueeze(-2)
        got = kernels.matmul(x, w.transpose(-1, -2), b)
        assert _rel_err(got, want) <= tol, (runs, m, k, n)
    # the FFN's first layer with its GELU, solo and as a 64-run pack (the modular readout rows), both forms;
    # the encoder's pooler (tanh) at IMDB's readout rows
    for runs, form, rows in ((None, "gelu_tanh", 512), (64, "gelu", 512), (8, "tanh", 128)):
        lead = () if runs is None else (runs,)
        x = torch.randn(*lead, rows, 128, device="cuda", generator=g).to(dtype)
        w1 = torch.randn(*lead, 512, 128, device="cuda", generator=g).to(dtype)
        h, pre = kernels.matmul(x, w1.transpose(-1, -2), None, act=form)
        dh = torch.randn(*lead, rows, 512, device="cuda", generator=g).to(dtype)
        dx, dpre = kernels.matmul_act_grad(dh, pre, w1, form)
        want_h, want_dpre = _act_reference(pre, dh, form)
        for got, want in ((h, want_h), (dpre, want_dpre), (dx, dpre.double() @ w1.double())):
            assert _rel_err(got, want) <= tol, (runs, form)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs", [None, 64])
def test_k_and_v_in_one_launch_each_way(dtype, runs):
    # matmul_fan (k, v = x Wkᵀ + bk, x Wvᵀ + bv, and q = x[:, 5] Wqᵀ + bq at the readout row) and matmul's pair
    # (dk Wk + dv Wv) at the modular shape (512 prompts of 6 positions), a 64-run pack's weights as views of one
    # buffer; against float64
    g = torch.Generator(device="cuda").manual_seed(9)
    lead = () if runs is None else (runs,)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    x = torch.randn(*lead, 3072, 128, device="cuda", generator=g).to(dtype)
    readout = x.view(*lead, 512, 6, 128)[..., 5, :]
    flat = torch.randn(*lead, 3 * (128 * 128 + 128) + 3, device="cuda", generator=g).to(dtype)
    size = 128 * 128 + 128
    ws = [flat[..., i * size:i * size + 128 * 128].view(*lead, 128, 128) for i in range(3)]
    bs = [flat[..., i * size + 128 * 128:(i + 1) * size] for i in range(3)]
    k, v, q = kernels.matmul_fan(x, ws[0].transpose(-1, -2), bs[0], ws[1].transpose(-1, -2), bs[1],
                                 third=(readout, ws[2].transpose(-1, -2), bs[2]))
    for got, a, w, b in ((k, x, ws[0], bs[0]), (v, x, ws[1], bs[1]), (q, readout, ws[2], bs[2])):
        want = a.double() @ w.double().transpose(-1, -2) + b.double().unsqueeze(-2)
        assert _rel_err(got, want) <= tol
    dk, dv = (torch.randn(*lead, 3072, 128, device="cuda", generator=g).to(dtype) for _ in range(2))
    dx = kernels.matmul(dk, ws[0], pair=(dv, ws[1]))
    want = dk.double() @ ws[0].double() + dv.double() @ ws[1].double()
    assert _rel_err(dx, want) <= tol


def _rel_err(got, want):
    """max |got - want| over max(1, max |want|), in float64."""
    return (got.double() - want).abs().max().item() / max(1.0, want.abs().max().item())


def _act_reference(pre, dy, form):
    """act(pre) and dy · act'(pre) in float64, by torch's own ops."""
    p, d = pre.double(), dy.double()
    if form == "tanh":
        return torch.tanh(p), torch.ops.aten.tanh_backward(d, torch.tanh(p))
    approximate = "tanh" if form == "gelu_tanh" else "none"
    return (torch.nn.functional.gelu(p, approximate=approximate),
            torch.ops.aten.gelu_backward(d, p, approximate=approximate))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs", [None, 64])
def test_matmul_adds_gradients_that_meet_in_place(dtype, runs):
    # the modular step's input gradient (batch 512, 6 positions, hidden 128; a 64-run pack): dx = dk Wk,
    # dx += dv Wv, dx[:, 5] += dq Wq + g -- bf16 operands into the fp32 gradient, as under autocast
    g = torch.Generator(device="cuda").manual_seed(8)
    lead = () if runs is None else (runs,)
    tol = 5e-5 if dtype == torch.float32 else 1e-2
    dk, dv = (torch.randn(*lead, 512 * 6, 128, device="cuda", generator=g).to(dtype) for _ in range(2))
    dq = torch.randn(*lead, 512, 128, device="cuda", generator=g).to(dtype)
    wk, wv, wq = (torch.randn(*lead, 128, 128, device="cuda", generator=g).to(dtype) for _ in range(3))
    res = torch.randn(*lead, 512, 128, device="cuda", generator=g)
    dx = torch.full((*lead, 512, 6, 128), float("nan"), device="cuda")
    flat = dx.view(*lead, 512 * 6, 128)
    kernels.matmul(dk, wk, out=flat)
    kernels.matmul(dv, wv, add=flat, out=flat)
    row = dx[..., 5, :]
    kernels.matmul(dq, wq, add=(row, res), out=row)
    want = (dk.double() @ wk.double() + dv.double() @ wv.double()).view(*lead, 512, 6, 128)
    want[..., 5, :] += dq.double() @ wq.double() + res.double()
    assert (dx.double() - want).abs().max().item() <= 2 * tol * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs,m,k", [(None, 512, 128), (None, 512, 512), (64, 512, 512), (None, 128, 128)])
def test_matmul_layer_norm_at_the_step_shapes(dtype, runs, m, k):
    # post-LN's o and fc2 projections at the readout rows (modular 512, IMDB 128; a 64-run pack), the fp32
    # residual stream a strided row of (B, 6, 128), LayerNorm(x Wᵀ + b + residual) against float64
    g = torch.Generator(device="cuda").manual_seed(9)
    lead = () if runs is None else (runs,)
    x = torch.randn(*lead, m, k, device="cuda", generator=g).to(dtype)
    w = torch.randn(*lead, 128, k, device="cuda", generator=g).to(dtype) / k ** 0.5
    b = torch.randn(*lead, 128, device="cuda", generator=g).to(dtype)
    res = torch.randn(*lead, m, 6, 128, device="cuda", generator=g)[..., 5, :]
    lw, lb = (torch.randn(*lead, 128, device="cuda", generator=g) for _ in range(2))
    y, z, mean, rstd = kernels.matmul_layer_norm(x, w.transpose(-1, -2), b, res, lw, lb, 1e-5)
    z64 = x.double() @ w.double().transpose(-1, -2) + b.double().unsqueeze(-2) + res.double()
    zs = z.double()
    y64 = (zs - zs.mean(-1, keepdim=True)) / (zs.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    y64 = y64 * lw.double().unsqueeze(-2) + lb.double().unsqueeze(-2)
    tol = 5e-5 if dtype == torch.float32 else 1e-2
    for got, want in ((z, z64), (y, y64)):
        assert got.dtype == torch.float32
        assert _rel_err(got, want) <= tol


@pytest.mark.parametrize("runs,m,n", [(None, 512, 128), (None, 512, 512), (64, 512, 512), (None, 128, 128)])
def test_matmul_layer_norm_grad_at_the_step_shapes(runs, m, n):
    # the backward of post-LN's LayerNorm and its projection's input gradient (o: n 128, fc2: n 512) at the readout
    # rows, fp32 (the path the trainer takes outside autocast), against float64 autograd of LayerNorm(z)
    g = torch.Generator(device="cuda").manual_seed(10)
    lead = () if runs is None else (runs,)
    x = torch.randn(*lead, m, n, device="cuda", generator=g)
    w = torch.randn(*lead, 128, n, device="cuda", generator=g) / n ** 0.5
    b, lw, lb = (torch.randn(*lead, 128, device="cuda", generator=g) for _ in range(3))
    res = torch.randn(*lead, m, 128, device="cuda", generator=g)
    _, z, mean, rstd = kernels.matmul_layer_norm(x, w.transpose(-1, -2), b, res, lw, lb, 1e-5)
    dy = torch.randn(*lead, m, 128, device="cuda", generator=g)
    dx, dz, part_w, part_b = kernels.matmul_layer_norm_grad(dy, z, lw, mean, rstd, w)
    z64, lw64 = z.double().requires_grad_(), lw.double().requires_grad_()
    lb64 = lb.double().requires_grad_()
    xhat = (z64 - z64.mean(-1, keepdim=True)) / (z64.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    (xhat * lw64.unsqueeze(-2) + lb64.unsqueeze(-2)).backward(dy.double())
    for got, want in ((dz, z64.grad), (dx, z64.grad @ w.double()), (part_w.sum(-2), lw64.grad),
                      (part_b.sum(-2), lb64.grad)):
        assert _rel_err(got, want) <= 5e-5


def test_matmul_with_tf32_allowed_runs_its_tf32_tiles():
    # TF32 on (10-bit mantissas): its own tiles and the GELU' prologue in that mode, against float64
    g = torch.Generator(device="cuda").manual_seed(7)
    x, w = torch.randn(3072, 128, device="cuda", generator=g), torch.randn(512, 128, device="cuda", generator=g)
    dh = torch.randn(3072, 512, device="cuda", generator=g)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        h, pre = kernels.matmul(x, w.t(), None, act="gelu_tanh")
        dx, dpre = kernels.matmul_act_grad(dh, pre, w, "gelu_tanh")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    want_pre = x.double() @ w.double().t()
    assert (pre.double() - want_pre).abs().max().item() <= 5e-3 * want_pre.abs().max().item()
    want_dx = dpre.double() @ w.double()
    assert (dx.double() - want_dx).abs().max().item() <= 5e-3 * want_dx.abs().max().item()


@pytest.mark.parametrize("batch", [512, 2873])  # the modular batch, and the paper preset's full batch
def test_token_position_embedding_matches_reference_and_repeats_to_the_bit(batch):
    g = torch.Generator(device="cuda").manual_seed(6)
    ids = torch.randint(0, 117, (batch, 7), device="cuda", generator=g)[:, :6]
    tok, pos = torch.randn(117, 128, device="cuda", generator=g), torch.randn(512, 128, device="cuda", generator=g)
    dy = torch.randn(batch, 6, 128, device="cuda", generator=g)
    results = []
    kernel, reference = kernels.token_position_embedding, kernels.token_position_embedding_reference
    for fn in (kernel, kernel, reference):
        t, p = tok.clone().requires_grad_(), pos.clone().requires_grad_()
        y = fn(ids, t, p)
        y.backward(dy)
        results.append((y, t.grad, p.grad))
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1]))  # no atomics: the same bits
    for a, b in zip(results[0], results[2]):
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(1000, 64), torch.nn.Linear(64, 64), torch.nn.LayerNorm(64),
                               torch.nn.Linear(64, 10)).cuda()


@pytest.mark.parametrize("grokfast", [False, True])
def test_fused_adamw_follows_torch_for_100_steps(grokfast):
    from grokfast_train.grokfast import GrokfastEMA

    ref, fused = _model(), _model()
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=1.0)
    filt = GrokfastEMA(ref.parameters(), 0.98, 2.0) if grokfast else None
    opt = kernels.FusedAdamW(fused.parameters(), lr=1e-3, weight_decay=1.0,
                             grokfast_alpha=0.98 if grokfast else None, grokfast_lamb=2.0)
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(100):
        x = torch.randint(0, 1000, (64,), device="cuda", generator=g)
        for model, o in ((ref, opt_ref), (fused, opt)):
            o.zero_grad()
            model(x).square().mean().backward()
            if o is opt_ref and filt is not None:
                filt.apply_()
            o.step()
    for a, b in zip(ref.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _adamw_against_reference_every_step(device, blocks_per_group, steps):
    """FusedAdamW with the Grokfast filter, two param groups of ``blocks_per_group`` programs each, fed
    g = p + noise for ``steps`` steps; at every step the kernel's result must equal adamw_reference_step
    applied to the kernel's own state before the step, with the true t (and the whole trajectory must
    follow an independent reference run). Returns the worst error / tolerance over all steps.

    It guards the step counter (issue 10): a warp that read its program's counter after the increment
    would use t + 1 -- the next bias correction, and at t = 1 the EMA update instead of h = g. The betas
    keep that visible at every step: group 0 (beta1 0, beta2 0.99999) has sqrt(1 - beta2^t) still
    growing at t = 2,000 (a t + 1 moves the update by ~2.5e-4 of itself there), group 1 (beta1 0.999,
    beta2 0.9) has 1 - beta1^t growing; one group each, so the two corrections cannot cancel. The
    gradient pulls p to 0, so p stays small and its rounding far below such an error."""
    from kernels.adamw import BLOCK, adamw_reference_step

    gen = torch.Generator(device=device).manual_seed(0)
    hypers = [dict(lr=1e-2, betas=(0.0, 0.99999)), dict(lr=1e-2, betas=(0.999, 0.9))]
    common = dict(eps=1e-8, weight_decay=0.1, grokfast_alpha=0.98, grokfast_lamb=2.0)
    params = [torch.nn.Parameter(0.01 * torch.randn(blocks_per_group * BLOCK - 100, device=device, generator=gen))
              for _ in hypers]
    opt = kernels.FusedAdamW([dict(params=[p], **hp) for p, hp in zip(params, hypers)], **common)
    assert opt._num_programs == 2 * blocks_per_group

    def state(p):
        st = opt.state[p]
        return [p.detach(), st["exp_avg"], st["exp_avg_sq"], st["grokfast_h"]]

    trajectory = [[x.clone() for x in state(p)] for p in params]
    inf = torch.tensor(float("inf"), device=device)
    worst = []  # per step, on the device: max error / tolerance over every tensor of both groups
    for t in range(1, steps + 1):
        grads = [p.detach() + 0.1 * torch.randn(p.shape, device=device, generator=gen) for p in params]
        refs = [[x.clone() for x in state(p)] for p in params]
        for p, g in zip(params, grads):
            p.grad.copy_(g)
        opt.step()
        ratios = []
        for p, g, hp, ref, traj in zip(params, grads, hypers, refs, trajectory):
            kw = dict(lr=hp["lr"], beta1=hp["betas"][0], beta2=hp["betas"][1], eps=common["eps"],
                      weight_decay=common["weight_decay"], grokfast_alpha=common["grokfast_alpha"],
                      grokfast_lamb=common["grokfast_lamb"])
            p_before = ref[0].clone()
            adamw_reference_step(ref[0], g, ref[1], ref[2], t, grokfast_h=ref[3], **kw)
            adamw_reference_step(traj[0], g, traj[1], traj[2], t, grokfast_h=traj[3], **kw)
            got = state(p)
            # p: 1e-5 of this element's own update, plus a few ulps of p (the roundings of decay and update)
            update = (ref[0] - p_before).abs()
            ulp = torch.nextafter(ref[0].abs(), inf) - ref[0].abs()
            ratios.append(((got[0] - ref[0]).abs() / (1e-5 * update + 4 * ulp + 1e-7 * update.max())).max())
            for a, b in zip(got[1:], ref[1:]):  # exp_avg, exp_avg_sq, h: as the one-step CPU test
                ratios.append((a - b).abs().max() / (1e-6 * b.abs().max()).clamp_min(1e-30))
        worst.append(torch.stack(ratios).max())
    worst = torch.stack(worst).cpu()
    late = (worst > 1).nonzero().flatten()
    assert late.numel() == 0, f"steps {(late + 1).tolist()[:20]} are off the reference by up to {worst.max():.3g} x tol"
    assert opt._steps.tolist() == [steps] * opt._num_programs
    for p, traj in zip(params, trajectory):  # a net for gross errors (a skipped h = g moves p by ~lr); on a GPU
        # torch's roundings differ from the kernel's by an ulp here and there, a random walk of ~1e-6
        torch.testing.assert_close(p.detach(), traj[0], atol=1e-4, rtol=0)
    return worst.max().item()


def test_fused_adamw_step_counter_over_2000_steps_of_2000_blocks():
    """Issue 10, the step counter read by every thread and incremented by one: 4 M program-steps."""
    _adamw_against_reference_every_step("cuda", blocks_per_group=1000, steps=2000)


def test_fused_adamw_step_replays_in_a_cuda_graph():
    eager, graphed = _model(), _model()
    opts = [kernels.FusedAdamW(m.parameters(), lr=1e-3, weight_decay=0.1) for m in (eager, graphed)]
    x = torch.randint(0, 1000, (64,), device="cuda")

    def step(model, opt):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step(graphed, opts[1])
            step(eager, opts[0])
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(graphed, opts[1])
    for _ in range(10):
        graph.replay()
        step(eager, opts[0])
    torch.cuda.synchronize()
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_trainer_triton_backend_follows_torch_on_cuda(tmp_path):
    import json

    from grokfast_train.cli import main

    args = ["--dataset", "modular", "--p", "23", "--steps", "200", "--eval-every", "50", "--quiet", "--device", "cuda"]
    assert main([*args, "--backend", "torch", "--out", str(tmp_path / "torch")]) == 0
    assert main([*args, "--backend", "triton", "--out", str(tmp_path / "triton")]) == 0
    rows = [[json.loads(line) for line in (tmp_path / b / "metrics.jsonl").read_text().splitlines()]
            for b in ("torch", "triton")]
    for a, b in zip(*rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-2, abs=1e-3)


@pytest.mark.parametrize("runs", [None, 8])
def test_readout_attention_matches_reference_at_the_imdb_shape(runs):
    # 128 sequences x 256 keys x 128 wide, 4 heads (a pack: 8 runs of 16 sequences, its weights (8, C, C)), IMDB-like
    # padding and one sequence without keys, the readout at row 0; against the reference in float64 on the device
    from kernels.readout_attention import (readout_attention_backward, readout_attention_backward_reference,
                                           readout_attention_forward, readout_attention_forward_reference)

    g = torch.Generator(device="cuda").manual_seed(9)
    N, L, C, heads = 128, 256, 128, 4
    lead = () if runs is None else (runs,)
    x = torch.randn(N, L, C, device="cuda", generator=g)
    w = [torch.randn(*lead, C, C, device="cuda", generator=g) * C ** -0.5 if i % 2 == 0 else
         torch.randn(*lead, C, device="cuda", generator=g) * 0.1 for i in range(6)]
    lengths = torch.randint(1, L + 1, (N,), device="cuda", generator=g)
    mask = torch.arange(L, device="cuda")[None, :] < lengths[:, None]
    mask[3] = False
    dout, drow = torch.randn(N, C, device="cuda", generator=g), torch.randn(N, C, device="cuda", generator=g)
    saved = readout_attention_forward(x, 0, *w, heads, mask)
    ref = readout_attention_forward_reference(x.double(), 0, *(t.double() for t in w), heads, mask)
    grads = readout_attention_backward(dout, drow, x, 0, saved, w[0], w[2], w[3], w[4], heads, mask)
    ref_grads = readout_attention_backward_reference(dout.double(), drow.double(), x.double(), 0, ref, w[0].double(),
                                                     w[2].double(), w[3].double(), w[4].double(), heads, mask)
    for name, a, b in [*zip(saved._fields, saved, ref), *zip(grads._fields, grads, ref_grads)]:
        # (lse is +inf for the sequence without keys, on both sides; nothing else may be non-finite)
        assert torch.equal(torch.isinf(a), torch.isinf(b)) and not torch.isnan(a).any(), name
        a, b = torch.where(torch.isinf(b), 0.0, a.double()), torch.where(torch.isinf(b), 0.0, b)
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item()), name
