"""kernels.FusedAdamW against torch.optim.AdamW (and the Grokfast filter applied before it).

Two paths are tested: the Triton kernel (run by Triton's interpreter on CPU tensors; conftest sets
TRITON_INTERPRET=1) and the pure-PyTorch reference path (what CPU runs without the interpreter),
selected by patching the dispatcher.
"""

import copy

import pytest
import torch
import triton
import triton.language as tl
from torch import nn
from triton.runtime import interpreter

import kernels.adamw as adamw_mod
from kernels.adamw import BLOCK, FusedAdamW, adamw_reference_step

ONE_STEP_RTOL = 1e-6  # one step from identical state: max |fused - torch| <= 1e-6 * max |torch|, per tensor
TRAJECTORY_ATOL = 1e-5  # 100 steps on a real model: max |fused - torch| over every parameter, at every step


@pytest.fixture(params=["triton", "reference"])
def path(request, monkeypatch):
    if request.param == "reference":
        monkeypatch.setattr(adamw_mod, "use_triton", lambda *t: False)
    else:
        assert adamw_mod.use_triton(torch.zeros(1)), "the interpreter should be on (tests/conftest.py)"
    return request.param


def _model(seed=0):
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 32)
            # bias=False: an attention key bias has an exactly-zero true gradient, so Adam would follow
            # its rounding noise (+-lr per step) and no two implementations could agree on it
            self.layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True,
                                                    bias=False)
            self.norm = nn.LayerNorm(32)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            return self.head(self.norm(self.layer(self.emb(x))[:, 0]))

    return Net()


def _batch(step):
    g = torch.Generator().manual_seed(1000 + step % 4)  # four fixed batches: a learnable task
    return torch.randint(0, 40, (8, 6), generator=g), torch.randint(0, 3, (8,), generator=g)


def _loss(model, step):
    x, y = _batch(step)
    return nn.functional.cross_entropy(model(x), y)


def _grokfast_filter_(params, hs, alpha, lamb):
    """Grokfast's gradfilter_ema (Lee et al. 2024) on .grad in place: h starts at the first gradient."""
    for i, p in enumerate(params):
        if hs[i] is None:
            hs[i] = p.grad.detach().clone()
        else:
            hs[i].mul_(alpha).add_(p.grad, alpha=1 - alpha)
        p.grad.add_(hs[i], alpha=lamb)


def _max_diff(a_params, b_params):
    return max((a.detach() - b.detach()).abs().max().item() for a, b in zip(a_params, b_params))


# ----------------------------------------------------------------------------- one step

def _random_state(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(300, 7), (13,), (BLOCK + 1,), (1,), (2, 3, 5)]
    ps = [torch.randn(s, generator=g) for s in shapes]
    # gradients and second moments over many orders of magnitude (including eps-dominated elements)
    grads = [torch.randn(s, generator=g) * 10.0 ** torch.randint(-6, 2, s, generator=g) for s in shapes]
    ms = [torch.randn(s, generator=g) * 0.1 for s in shapes]
    vs = [torch.rand(s, generator=g) * 10.0 ** torch.randint(-14, 0, s, generator=g) for s in shapes]
    return ps, grads, ms, vs


@pytest.mark.parametrize("step,hp", [
    (1, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)),
    (7, dict(lr=3e-3, betas=(0.8, 0.98), eps=1e-6, weight_decay=1.0)),
    (12345, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    (3, dict(lr=1e-2, betas=(0.3, 0.5), eps=1e-8, weight_decay=0.1)),
])
def test_one_step_matches_torch_adamw(path, step, hp):
    ps, grads, ms, vs = _random_state(step)
    tp = [nn.Parameter(p.clone()) for p in ps]
    topt = torch.optim.AdamW(tp, **hp)
    for p, gr, m, v in zip(tp, grads, ms, vs):
        p.grad = gr.clone()
        topt.state[p] = dict(step=torch.tensor(float(step - 1)), exp_avg=m.clone(), exp_avg_sq=v.clone())
    topt.step()

    fp = [nn.Parameter(p.clone()) for p in ps]
    fopt = FusedAdamW(fp, **hp)
    fopt.load_state_dict({"state": {i: dict(step=torch.tensor(float(step - 1)), exp_avg=m.clone(),
                                            exp_avg_sq=v.clone()) for i, (m, v) in enumerate(zip(ms, vs))},
                          "param_groups": fopt.state_dict()["param_groups"]})
    for p, gr in zip(fp, grads):
        p.grad.copy_(gr)
    fopt.step()

    for a, b, p0 in zip(fp, tp, ps):
        assert not torch.equal(b.detach(), p0)
        err = (a.detach() - b.detach()).abs().max().item()
        assert err <= ONE_STEP_RTOL * b.abs().max().item(), err
        # the update itself, against the update's scale plus one rounding of the parameter
        da, db = a.detach() - p0, b.detach() - p0
        assert (da - db).abs().max().item() <= 1e-6 * db.abs().max().item() + 2.5e-7 * p0.abs().max().item()
    for pf, pt in zip(fp, tp):
        a, b = fopt.state[pf], topt.state[pt]
        for k in ("exp_avg", "exp_avg_sq"):
            assert (a[k] - b[k]).abs().max().item() <= ONE_STEP_RTOL * b[k].abs().max().item(), k
    assert int(fopt.state_dict()["state"][0]["step"]) == step


def test_reference_step_is_torch_arithmetic():
    """adamw_reference_step is the executable spec: per-parameter it is torch's single-tensor AdamW, bit for bit."""
    ps, grads, ms, vs = _random_state(5)
    tp = [nn.Parameter(p.clone()) for p in ps]
    topt = torch.optim.AdamW(tp, lr=2e-3, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.05, foreach=False)
    for p, gr, m, v in zip(tp, grads, ms, vs):
        p.grad = gr.clone()
        topt.state[p] = dict(step=torch.tensor(4.0), exp_avg=m.clone(), exp_avg_sq=v.clone())
    topt.step()
    rp, rm, rv = [p.clone() for p in ps], [m.clone() for m in ms], [v.clone() for v in vs]
    adamw_reference_step(rp, grads, rm, rv, 5, lr=2e-3, beta1=0.9, beta2=0.99, eps=1e-7, weight_decay=0.05)
    for a, b in zip(rp, tp):
        assert torch.equal(a, b.detach())
    for m, v, p in zip(rm, rv, tp):
        assert torch.equal(m, topt.state[p]["exp_avg"]) and torch.equal(v, topt.state[p]["exp_avg_sq"])


def test_reference_grokfast_filter():
    g1, g2 = torch.randn(10), torch.randn(10)
    h = torch.full((10,), float("nan"))
    p, m, v = torch.zeros(10), torch.zeros(10), torch.zeros(10)
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grokfast_alpha=0.9, grokfast_lamb=2.0)
    adamw_reference_step(p, g1, m, v, 1, grokfast_h=h, **kw)
    assert torch.equal(h, g1)  # h starts at the first gradient
    torch.testing.assert_close(m, 0.1 * 3 * g1)  # the update used g + 2h = 3g
    adamw_reference_step(p, g2, m, v, 2, grokfast_h=h, **kw)
    torch.testing.assert_close(h, 0.9 * g1 + 0.1 * g2)


# ----------------------------------------------------------------------------- trajectories

def _train_pair(fused_kwargs, steps, grokfast=None, groups=False):
    torch_model, fused_model = _model(), _model()
    if groups:  # no weight decay (and a larger lr) on biases and LayerNorm parameters

        def split(m):
            decay = [p for n, p in m.named_parameters() if p.dim() > 1]
            rest = [p for n, p in m.named_parameters() if p.dim() <= 1]
            return [dict(params=decay), dict(params=rest, weight_decay=0.0, lr=3e-3)]

        tparams, fparams = split(torch_model), split(fused_model)
    else:
        tparams, fparams = torch_model.parameters(), fused_model.parameters()
    hp = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    topt = torch.optim.AdamW(tparams, **hp)
    fopt = FusedAdamW(fparams, **hp, **fused_kwargs)
    hs = [None] * len(list(torch_model.parameters()))
    worst, losses = 0.0, []
    for step in range(steps):
        topt.zero_grad()
        loss = _loss(torch_model, step)
        loss.backward()
        if grokfast is not None:
            _grokfast_filter_(list(torch_model.parameters()), hs, *grokfast)
        topt.step()
        fopt.zero_grad()
        _loss(fused_model, step).backward()
        fopt.step()
        losses.append(loss.item())
        worst = max(worst, _max_diff(fused_model.parameters(), torch_model.parameters()))
    return worst, losses, fopt


@pytest.mark.parametrize("grokfast", [None, (0.98, 2.0)], ids=["adamw", "grokfast"])
def test_100_step_trajectory_matches_torch(path, grokfast):
    kw = {} if grokfast is None else dict(grokfast_alpha=grokfast[0], grokfast_lamb=grokfast[1])
    worst, losses, fopt = _train_pair(kw, 100, grokfast=grokfast)
    assert worst <= TRAJECTORY_ATOL, worst
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])  # it is a real training run
    # the padding of the flat buffers is never written
    n = sum(b[0].numel() for b in fopt._bindings)  # one group: the parameters, then the padding
    for buf in (fopt._flat_param, fopt._exp_avg, fopt._exp_avg_sq) + ((fopt._h,) if fopt._h is not None else ()):
        assert torch.count_nonzero(buf[n:]) == 0


def test_param_groups_trajectory(path):
    worst, _, fopt = _train_pair({}, 15, groups=True)
    assert len(fopt.param_groups) == 2 and worst <= TRAJECTORY_ATOL, worst


def test_grokfast_changes_the_trajectory():
    """The filter is really applied: with it on, FusedAdamW leaves plain AdamW's trajectory."""
    worst, _, _ = _train_pair(dict(grokfast_alpha=0.98, grokfast_lamb=2.0), 3)
    assert worst > 1e-4


# ----------------------------------------------------------------------------- the step counter

def _watch_scalar_read_then_write(monkeypatch) -> list:
    """Record every address that a program reads with a plain scalar load and then writes with a plain
    store, no barrier between: on a GPU every thread of the block performs the scalar load while one
    thread performs the store, and nothing orders a late warp's load after the store (issue 10: the
    step counter read by all threads, then incremented by one). The interpreter runs a program as one
    sequential thread, so it cannot show the race itself; it can show the pattern that makes it possible.
    Returns the list that fills with (program, address) while the patch is on."""
    builder = interpreter.interpreter_builder
    load, store = builder.create_masked_load, builder.create_masked_store
    barrier, set_grid_idx = builder.create_barrier, builder.set_grid_idx
    read: set[int] = set()
    found: list = []

    def watched_set_grid_idx(*idx):
        read.clear()
        return set_grid_idx(*idx)

    def watched_load(ptrs, mask, *args):
        if ptrs.data.size == 1 and mask.data.all():
            read.add(int(ptrs.data.item()))
        return load(ptrs, mask, *args)

    def watched_store(ptrs, value, mask, *args):
        written = read.intersection(ptrs.data[mask.data].ravel().tolist())
        found.extend((builder.grid_idx, a) for a in sorted(written))
        return store(ptrs, value, mask, *args)

    def watched_barrier():
        read.clear()
        return barrier()

    monkeypatch.setattr(builder, "set_grid_idx", watched_set_grid_idx)
    monkeypatch.setattr(builder, "create_masked_load", watched_load)
    monkeypatch.setattr(builder, "create_masked_store", watched_store)
    monkeypatch.setattr(builder, "create_barrier", watched_barrier)
    return found


@triton.jit
def _racy_counter_kernel(count_ptr, out_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(count_ptr + pid) + 1  # what FusedAdamW did before the fix of issue 10
    tl.store(count_ptr + pid, t)
    tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), t.to(tl.float32) + tl.zeros([BLOCK], tl.float32))


def test_step_counter_advances_once_per_program_with_no_read_then_write(monkeypatch):
    """Each program's step counter goes up by exactly one per step, and no program reads it with a plain
    load that its own store then overwrites (the intra-block race of issue 10; see the watcher)."""
    found = _watch_scalar_read_then_write(monkeypatch)
    # the watcher sees the racy pattern where it exists (else this test could not fail)
    counts = torch.zeros(3, dtype=torch.int32)
    _racy_counter_kernel[(3,)](counts, torch.empty(3 * 32), BLOCK=32)
    assert len(found) == 3 and counts.tolist() == [1, 1, 1]
    found.clear()

    g = torch.Generator().manual_seed(0)
    big, small = nn.Parameter(torch.randn(2 * BLOCK + 5, generator=g)), nn.Parameter(torch.randn(7, generator=g))
    opt = FusedAdamW([dict(params=[big]), dict(params=[small], lr=3e-3)], grokfast_alpha=0.9, grokfast_lamb=1.0)
    assert opt._num_programs == 4
    for step in range(1, 4):
        for p in (big, small):
            p.grad.copy_(torch.randn(p.shape, generator=g))
        opt.step()
        assert opt._steps.tolist() == [step] * 4
    assert found == []
    assert opt.state_dict()["state"][1]["step"].item() == 3


# ----------------------------------------------------------------------------- checkpoints

def _run(model, opt, steps, start=0):
    for step in range(start, start + steps):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()


@pytest.mark.parametrize("kw", [{}, dict(grokfast_alpha=0.9, grokfast_lamb=1.5)], ids=["adamw", "grokfast"])
def test_state_dict_round_trip_reproduces_the_trajectory_exactly(path, kw):
    ref_model = _model()
    ref_opt = FusedAdamW(ref_model.parameters(), weight_decay=0.1, **kw)
    _run(ref_model, ref_opt, 12)

    model = _model()
    opt = FusedAdamW(model.parameters(), weight_decay=0.1, **kw)
    _run(model, opt, 6)
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    _run(model, opt, 2, start=100)  # diverge after the checkpoint, so the restore must overwrite state
    assert ckpt["opt"]["state"][0]["step"].item() == 6

    resumed = _model(seed=123)
    resumed_opt = FusedAdamW(resumed.parameters(), weight_decay=0.1, **kw)
    resumed.load_state_dict(ckpt["model"])  # copies into the optimiser's flat buffer
    resumed_opt.load_state_dict(ckpt["opt"])
    _run(resumed, resumed_opt, 6, start=6)
    for a, b in zip(resumed.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    # and into the same optimiser, in place (what a CUDA-graph user does)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    _run(model, opt, 6, start=6)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)


def test_loads_a_torch_adamw_checkpoint():
    tm, fm = _model(), _model()
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, weight_decay=1e-2)
    _run(tm, topt, 5)
    fm.load_state_dict(tm.state_dict())
    fopt = FusedAdamW(fm.parameters(), lr=1e-3, weight_decay=1e-2)
    fopt.load_state_dict(topt.state_dict())
    _run(tm, topt, 5, start=5)
    _run(fm, fopt, 5, start=5)
    assert _max_diff(fm.parameters(), tm.parameters()) <= TRAJECTORY_ATOL
    with pytest.raises(ValueError, match="grokfast_h"):
        FusedAdamW(_model().parameters(), grokfast_alpha=0.9).load_state_dict(topt.state_dict())


# ----------------------------------------------------------------------------- learning rate

def test_lr_change_through_param_groups_takes_effect(path):
    tm, fm = _model(), _model()
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, weight_decay=1e-2)
    fopt = FusedAdamW(fm.parameters(), lr=1e-3, weight_decay=1e-2)
    schedule = [1e-3, 1e-3, 5e-3, 5e-3, 2e-4, 0.0, 0.0, 1e-3]
    for step, lr in enumerate(schedule):
        before = [p.detach().clone() for p in fm.parameters()]
        for opt, model in ((topt, tm), (fopt, fm)):
            opt.param_groups[0]["lr"] = lr
            opt.zero_grad()
            _loss(model, step).backward()
            opt.step()
        if lr == 0.0:  # no update, no decay
            assert all(torch.equal(a, b) for a, b in zip(fm.parameters(), before))
        assert _max_diff(fm.parameters(), tm.parameters()) <= TRAJECTORY_ATOL
    assert fopt.state_dict()["param_groups"][0]["lr"] == 1e-3


def test_set_lr_and_lr_tensor(path):
    fm, tm = _model(), _model()
    fopt = FusedAdamW(fm.parameters(), lr=1e-3)
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-3)
    fopt.set_lr(4e-3)
    topt.param_groups[0]["lr"] = 4e-3
    assert fopt.param_groups[0]["lr"] == 4e-3 and fopt.lr_tensor().item() == 4e-3
    _run(fm, fopt, 2)
    _run(tm, topt, 2)
    assert _max_diff(fm.parameters(), tm.parameters()) <= TRAJECTORY_ATOL
    if path == "triton":  # the kernel reads the device-side lr: write it directly, as between graph replays
        fopt.lr_tensor().fill_(0.0)
        before = [p.detach().clone() for p in fm.parameters()]
        _run(fm, fopt, 1, start=2)
        assert all(torch.equal(a, b) for a, b in zip(fm.parameters(), before))
        assert fopt.state_dict()["param_groups"][0]["lr"] == 0.0


# ----------------------------------------------------------------------------- bindings and errors

def test_weight_norm_is_every_parameter_once_and_holds_names_exactly_the_buffers_parameters():
    """One reduction over the flat buffer, with zeros between two groups and after steps of both, against the
    float64 norm of the parameters; ``holds`` true for exactly the parameters given (the trainer's condition for
    using it), false with one missing or one more."""
    model = _model()
    params = list(model.parameters())
    opt = FusedAdamW([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.5}])
    _run(model, opt, 3)
    assert opt._numel > sum(p.numel() for p in params)  # (padding between the groups)
    want = sum(p.detach().double().square().sum() for p in params).sqrt().item()
    assert abs(opt.weight_norm().item() - want) <= 1e-6 * want
    assert opt.holds(model.parameters()) and opt.holds(reversed(params))
    assert not opt.holds(params[1:]) and not opt.holds([*params, torch.nn.Parameter(torch.zeros(1))])


def test_grads_and_params_are_views_of_the_flat_buffers():
    model = _model()
    opt = FusedAdamW(model.parameters())
    _run(model, opt, 1)
    for p, pv, gv, _ in opt._bindings:
        assert p.grad is gv and p.data_ptr() == pv.data_ptr()
        assert p.grad.untyped_storage().data_ptr() == opt._flat_grad.untyped_storage().data_ptr()
    opt.zero_grad(set_to_none=False)  # in place: the views stay, zeroed
    for p, _, gv, _ in opt._bindings:
        assert p.grad is gv
    assert torch.count_nonzero(opt._flat_grad) == 0
    opt.zero_grad()  # the default drops them; the next step gathers the new gradients
    assert all(p.grad is None for p in model.parameters())
    _run(model, opt, 1, start=1)
    assert all(p.grad is gv for p, _, gv, _ in opt._bindings)


class _Tied(nn.Module):
    """A tied embedding (two gradient contributions), and a parameter the loss leaves (``_tied_steps``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 8)
        self.mid = nn.Linear(8, 8)
        self.unused = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return self.mid(self.emb(x)) @ self.emb.weight.t()


def _tied_steps(opt_zero_grad, steps=6):
    model = _Tied()
    opt = FusedAdamW(model.parameters(), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        opt_zero_grad(opt)
        x = torch.randint(0, 11, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), x)
        if step == 0:  # a gradient for `unused` once: later steps must not reuse it
            loss = loss + model.unused.square().sum()
        loss.backward()
        opt.step()
    return model


def test_gathered_gradients_follow_accumulated_ones_to_the_bit(path):
    """zero_grad() (gradients adopted, then gathered) and zero_grad(set_to_none=False) (accumulated into
    zeroed views) are the same numbers: 0 + g is g, and the tied weight's two parts add in autograd's
    order either way. The parameter the loss reaches at the first step only gets a zero gradient after
    it both ways (weight decay still acts)."""
    a = _tied_steps(lambda o: o.zero_grad())
    b = _tied_steps(lambda o: o.zero_grad(set_to_none=False))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_after_zero_grad_backward_adds_nothing_into_the_gradients():
    """What zero_grad() saves: autograd adopts each fresh gradient instead of adding it into a zeroed
    view -- no addition per parameter (the tied weight's second part is the only one)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Adds(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ("add_", "add"):
                Adds.n += 1
            return func(*args, **(kwargs or {}))

    model = _Tied()
    opt = FusedAdamW(model.parameters())
    x = torch.arange(11)
    for set_to_none, adds in ((False, 4), (True, 1)):
        opt.zero_grad(set_to_none=set_to_none)
        Adds.n = 0
        with Adds():
            nn.functional.cross_entropy(model(x), x).backward()
        opt.step()
        # kept views: the tied weight's two parts, then emb, mid.weight and mid.bias into their views;
        # dropped views: the tied weight's two parts only
        assert Adds.n == adds, (set_to_none, Adds.n)


def test_model_zero_grad_set_to_none_still_correct(path):
    tm, fm = _model(), _model()
    topt = torch.optim.AdamW(tm.parameters())
    fopt = FusedAdamW(fm.parameters())
    for step in range(3):
        tm.zero_grad()
        fm.zero_grad(set_to_none=True)  # drops the views; step() copies the new grads back in
        _loss(tm, step).backward()
        _loss(fm, step).backward()
        topt.step()
        fopt.step()
    assert _max_diff(fm.parameters(), tm.parameters()) <= TRAJECTORY_ATOL
    assert all(p.grad is gv for p, _, gv, _ in fopt._bindings)


def test_unsupported_inputs_raise_value_error():
    with pytest.raises(ValueError, match="supported: float32"):
        FusedAdamW([nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    with pytest.raises(ValueError, match="supported: float32"):
        FusedAdamW([nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))])
    with pytest.raises(ValueError, match="one device"):
        FusedAdamW([nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, device="meta"))])
    with pytest.raises(ValueError, match="require grad"):
        FusedAdamW([nn.Parameter(torch.zeros(3), requires_grad=False)])
    with pytest.raises(ValueError, match="betas"):
        FusedAdamW([nn.Parameter(torch.zeros(3))], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="grokfast_alpha"):
        FusedAdamW([nn.Parameter(torch.zeros(3))], grokfast_alpha=1.5)
    opt = FusedAdamW([nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="fixed at construction"):
        opt.add_param_group(dict(params=[nn.Parameter(torch.zeros(2))]))
