"""PackedAdamW against R independent torch.optim.AdamW (+ GrokfastEMA) runs, one per run of the pack.

Each run has its own lr, betas, eps, weight decay and filter; the pack must move every run's slice
exactly as that run's own optimiser moves its solo parameters. Both implementations are checked:
the Triton kernel (under the interpreter) and the PyTorch rows of the CPU path -- the latter bit for bit
against the torch backend's solo optimiser (``torch.optim.AdamW(fused=True)`` + ``GrokfastEMA``), also
when each run's gradients are handed to it one run at a time (``step_runs``).
"""

import pytest
import torch

from grokfast_train.grokfast import GrokfastEMA
from kernels.packed_adamw import PackedAdamW

SHAPES = [(5, 7), (13,), (3, 4, 2)]  # odd sizes; the run-major buffer pads each run to a block
HYPER = [dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=1.0, grokfast_alpha=None, grokfast_lamb=0.0),
         dict(lr=3e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, grokfast_alpha=0.98, grokfast_lamb=2.0),
         dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.0, grokfast_alpha=0.9, grokfast_lamb=1.0)]


def _solo(params, h, fused=None):
    opt = torch.optim.AdamW(params, lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"],
                            fused=fused)
    filt = GrokfastEMA(params, h["grokfast_alpha"], h["grokfast_lamb"]) if h["grokfast_alpha"] else None
    return opt, filt


@pytest.mark.parametrize("kernel", [True, False], ids=["triton", "torch-rows"])
@pytest.mark.parametrize("runs", [1, 3])
def test_each_run_follows_its_own_adamw(kernel, runs):
    gen = torch.Generator().manual_seed(runs)
    hyper = HYPER[:runs] if runs > 1 else HYPER[1:2]
    init = [torch.randn(runs, *s, generator=gen) for s in SHAPES]
    packed = [torch.nn.Parameter(t.clone()) for t in init]
    opt = PackedAdamW(packed, hyper, kernel=kernel)
    solos = [[torch.nn.Parameter(t[r].clone()) for t in init] for r in range(runs)]
    solo_opts = [_solo(ps, h) for ps, h in zip(solos, hyper)]
    for _ in range(12):
        grads = [torch.randn(runs, *s, generator=gen) for s in SHAPES]
        opt.zero_grad()
        sum((p * g).sum() for p, g in zip(packed, grads)).backward()  # autograd fills the strided .grad views
        opt.step()
        for r, (o, filt) in enumerate(solo_opts):
            o.zero_grad()
            sum((p * g[r]).sum() for p, g in zip(solos[r], grads)).backward()
            if filt is not None:
                filt.apply_()
            o.step()
    for r in range(runs):
        for i in range(len(SHAPES)):
            torch.testing.assert_close(packed[i][r], solos[r][i], rtol=1e-5, atol=1e-6)
            state = opt.run_state(r)
            torch.testing.assert_close(state["exp_avg"][i], solo_opts[r][0].state[solos[r][i]]["exp_avg"],
                                       rtol=1e-5, atol=1e-7)
    assert opt.step_count == 12


def test_parameters_and_grads_are_views_of_one_run_major_buffer():
    params = [torch.nn.Parameter(torch.randn(2, *s)) for s in SHAPES]
    values = [p.detach().clone() for p in params]
    opt = PackedAdamW(params, HYPER[:2], kernel=False)
    for p, v in zip(params, values):
        torch.testing.assert_close(p.detach(), v, rtol=0, atol=0)  # rebinding kept the values
        assert p.untyped_storage().data_ptr() == opt.flat["param"].untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == opt.flat["grad"].untyped_storage().data_ptr()
    # run r's slices all lie in row r, so a run's norm is its row's
    norms = torch.stack([torch.linalg.vector_norm(torch.cat([v[r].flatten() for v in values])) for r in range(2)])
    torch.testing.assert_close(opt.weight_norms(), norms)


@pytest.mark.parametrize("kernel", [True, False], ids=["triton", "torch-rows"])
def test_a_frozen_run_never_touches_the_others(kernel):
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(3, *s, generator=gen) for s in SHAPES]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    opt_a, opt_b = PackedAdamW(a, HYPER, kernel=kernel), PackedAdamW(b, HYPER, kernel=kernel)
    opt_a.freeze(1)
    for _ in range(3):
        grads = [torch.randn(3, *s, generator=gen) for s in SHAPES]
        grads_a = [g.clone() for g in grads]
        for g in grads_a:
            g[1] = float("nan")  # what a diverged run computes
        for params, opt, gs in ((a, opt_a, grads_a), (b, opt_b, grads)):
            opt.zero_grad()
            sum((p * g).sum() for p, g in zip(params, gs)).backward()
            opt.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa[[0, 2]], pb[[0, 2]], rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [True, False], ids=["triton", "torch-rows"])
def test_a_frozen_run_stays_at_zero(kernel):
    params = [torch.nn.Parameter(torch.randn(2, *s)) for s in SHAPES]
    opt = PackedAdamW(params, HYPER[1:3], kernel=kernel)
    opt.freeze(0)
    for _ in range(3):
        opt.zero_grad()
        sum((p * torch.randn_like(p)).sum() for p in params).backward()  # finite: the frozen run's zero weights
        opt.step()
    assert all(torch.equal(p[0], torch.zeros_like(p[0])) for p in params)
    assert all(p[1].abs().sum() > 0 for p in params)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="run axis"):
        PackedAdamW([torch.nn.Parameter(torch.zeros(2, 3))], HYPER[:3])
    with pytest.raises(ValueError, match="dtype"):
        PackedAdamW([torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))], HYPER[:2])


@pytest.mark.parametrize("by_run", [False, True], ids=["step", "step_runs"])
def test_the_rows_are_the_torch_backends_solo_optimiser_bit_for_bit(by_run):
    """The rows path against torch.optim.AdamW(fused=True) + GrokfastEMA, one per run (what a torch-backend solo
    run builds): equal to the bit, so a pack computed run by run on the CPU takes its solo runs' steps. With
    ``step_runs`` each run's gradients come from a callback, in run order, and never enter the buffer."""
    gen = torch.Generator().manual_seed(11)
    hyper = [*HYPER, dict(HYPER[1], grokfast_alpha=0.9, grokfast_lamb=0.0)]  # a filter of gain 0: h kept all the same
    R = len(hyper)
    init = [torch.randn(R, *s, generator=gen) for s in SHAPES]
    packed = [torch.nn.Parameter(t.clone()) for t in init]
    opt = PackedAdamW(packed, hyper, kernel=False)
    solos = [[torch.nn.Parameter(t[r].clone()) for t in init] for r in range(R)]
    solo_opts = [_solo(ps, h, fused=True) for ps, h in zip(solos, hyper)]
    for _ in range(6):
        grads = [torch.randn(R, *s, generator=gen) for s in SHAPES]
        if by_run:
            asked = []
            opt.step_runs(lambda r: asked.append(r) or [g[r].clone() for g in grads], range(R))
            assert asked == list(range(R))
            assert all(torch.equal(gv, torch.zeros_like(gv)) for gv in opt.views["grad"])  # nothing copied in
        else:
            opt.zero_grad()
            sum((p * g).sum() for p, g in zip(packed, grads)).backward()
            opt.step()
        for r, (o, filt) in enumerate(solo_opts):
            for p, g in zip(solos[r], grads):
                p.grad = g[r].clone()
            if filt is not None:
                filt.apply_()
            o.step()
    for r in range(R):
        for i in range(len(SHAPES)):
            assert torch.equal(packed[i][r], solos[r][i]), (r, i)
            assert torch.equal(opt.run_state(r)["exp_avg_sq"][i], solo_opts[r][0].state[solos[r][i]]["exp_avg_sq"])
        if solo_opts[r][1] is not None:
            assert all(torch.equal(a, b) for a, b in zip(opt.run_state(r)["grokfast_h"], solo_opts[r][1].h))
    assert opt.step_count == 6


@pytest.mark.parametrize("kernel", [True, False], ids=["triton", "torch-rows"])
def test_step_runs_is_step_with_the_gradients_in_the_buffer(kernel):
    """``step_runs`` (the kernel's path: each run's gradients copied into its row, then one launch) against
    ``step()`` after one backward into the buffer, with and without ``zero_grad()`` before it; a frozen run is
    not asked for its gradients and stays at 0."""
    gen = torch.Generator().manual_seed(4)
    init = [torch.randn(3, *s, generator=gen) for s in SHAPES]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    opt_a, opt_b = PackedAdamW(a, HYPER, kernel=kernel), PackedAdamW(b, HYPER, kernel=kernel)
    for opt in (opt_a, opt_b):
        opt.freeze(1)
    for step in range(4):
        grads = [torch.randn(3, *s, generator=gen) for s in SHAPES]
        asked = []
        if step % 2:
            opt_a.zero_grad()  # .grad dropped: the kernel's path binds it to the buffer again
        opt_a.step_runs(lambda r: asked.append(r) or [g[r] for g in grads], [0, 2])
        assert asked == [0, 2]
        opt_b.zero_grad()
        sum((p * g).sum() for p, g in zip(b, grads)).backward()
        opt_b.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
        assert torch.equal(pa[1], torch.zeros_like(pa[1]))
    assert opt_a.step_count == opt_b.step_count == 4


def test_step_runs_counts_the_step_only_once_every_run_has_stepped():
    params = [torch.nn.Parameter(torch.randn(2, *s)) for s in SHAPES]
    opt = PackedAdamW(params, HYPER[:2], kernel=False)

    def grads_of(r):
        if r == 1:
            raise RuntimeError("run 1's backward failed")
        return [torch.randn(*s) for s in SHAPES]

    with pytest.raises(RuntimeError, match="run 1"):
        opt.step_runs(grads_of, [0, 1])
    assert opt.step_count == 0
    with pytest.raises(ValueError, match="2 gradients for 3 parameters"):
        opt.step_runs(lambda r: [torch.randn(*s) for s in SHAPES[:2]], [0])
