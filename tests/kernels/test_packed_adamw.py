"""PackedAdamW against R independent torch.optim.AdamW (+ GrokfastEMA) runs, one per run of the pack.

Each run has its own lr, betas, eps, weight decay and filter; the pack must move every run's slice
exactly as that run's own optimiser moves its solo parameters. Both implementations are checked:
the Triton kernel (under the interpreter) and the vectorised PyTorch rows of the CPU path.
"""

import pytest
import torch

from grokfast_train.grokfast import GrokfastEMA
from kernels.packed_adamw import PackedAdamW

SHAPES = [(5, 7), (13,), (3, 4, 2)]  # odd sizes; the run-major buffer pads each run to a block
HYPER = [dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=1.0, grokfast_alpha=None, grokfast_lamb=0.0),
         dict(lr=3e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, grokfast_alpha=0.98, grokfast_lamb=2.0),
         dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.0, grokfast_alpha=0.9, grokfast_lamb=1.0)]


def _solo(params, h):
    opt = torch.optim.AdamW(params, lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"])
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
