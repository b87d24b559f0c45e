"""kernels.fused_cross_entropy: the Triton kernels (under the interpreter) against the float64 reference.

The reference runs in float64 on exactly the logits the kernel sees, so the error measured is the
kernel's own. Loss and sums: max |kernel - reference| / max(1, max |reference|); the gradient the same.
The correct count and row count are exact.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F

from kernels.fused_cross_entropy import MAX_V, cross_entropy, cross_entropy_reference
from tests.kernels.launch_spy import LaunchSpy

ce_mod = importlib.import_module("kernels.fused_cross_entropy")

# dtype -> largest allowed relative error of the loss, the gradient and the loss sum. Measured under the
# interpreter: fp32 2.2e-7; bf16 <= 3.9e-3 and fp16 <= 4.7e-4, the gradient's one rounding to the dtype (the
# interpreter truncates to bf16: up to a whole ulp, 2^-7 < 8e-3); the loss and sums, fp32 in every dtype,
# <= 1e-7. (The gradient was once stored in the dtype and then scaled: two roundings, up to 1.03e-2.)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the kernels write starts as NaN, so an unwritten element shows in the result."""
    monkeypatch.setattr(ce_mod, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                               device=device))


def _close(name, got, ref, tol):
    assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten memory?)"
    err = (got.double() - ref.double()).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol} x {scale:.3g}"


def _inputs(shape, dtype, weighted, seed, shared_targets=False):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g) * 3).to(dtype)
    rows = shape[-2:-1] if shared_targets else shape[:-1]
    targets = torch.randint(0, shape[-1], rows, generator=g)
    weight = None
    if weighted:
        weight = torch.rand(shape[:-1], generator=g)
        weight[..., ::3] = 0.0  # rows out: they must add nothing anywhere
    return logits, targets, weight


def _check_case(shape, dtype, weighted, seed=0, shared_targets=False):
    logits, targets, weight = _inputs(shape, dtype, weighted, seed, shared_targets)
    runs = shape[:-2]
    g = torch.Generator().manual_seed(seed + 1)
    sums = torch.randn(*runs, 3, dtype=torch.float64, generator=g)  # added to, not overwritten
    ref_sums = sums.clone()
    dloss = torch.rand(runs, generator=g) + 0.5  # a gradient that is not 1, per run

    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, targets, weight, sums)
    loss.backward(dloss)

    x64 = logits.double().requires_grad_()
    ref = cross_entropy_reference(x64, targets, weight, ref_sums)
    ref.backward(dloss.double())

    tol = TOLERANCE[dtype]
    assert loss.shape == runs and loss.dtype == torch.float32
    assert x.grad.dtype == dtype and x.grad.shape == shape
    _close("loss", loss.detach(), ref.detach(), tol)
    _close("dlogits", x.grad, x64.grad, tol)
    _close("loss sum", sums[..., 0], ref_sums[..., 0], tol)
    assert torch.equal(sums[..., 1:], ref_sums[..., 1:]), (sums, ref_sums)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,v", [(1, 1), (7, 2), (100, 5), (513, 117), (33, 257), (3, 3000)])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(b, v, dtype, weighted):
    _check_case((b, v), dtype, weighted, seed=b * 31 + v)


def test_more_tiles_than_one_reduction_block():
    """The paper's modular full batch, 2,873 rows: 360 tiles of 8 rows, more than the 128 partials the
    reduction reads at a time."""
    assert ce_mod.triton.cdiv(2873, ce_mod._config(117)[1]) > ce_mod._REDUCE_BLOCK
    _check_case((2873, 117), torch.float32, True, seed=9)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("runs,b,v", [(1, 40, 117), (3, 37, 117), (4, 128, 2)])
def test_packed_runs_match_reference(runs, b, v, weighted):
    _check_case((runs, b, v), torch.float32, weighted, seed=runs * 7 + b)


def test_packed_runs_may_share_targets_and_weight():
    """An evaluation chunk: every run of a pack reads the same targets and the same validity weights."""
    logits, targets, _ = _inputs((3, 50, 117), torch.float32, False, seed=1, shared_targets=True)
    valid = (torch.arange(50) < 41).float()  # a ragged last chunk
    sums, ref_sums = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    loss = cross_entropy(logits, targets, valid, sums)
    ref = cross_entropy_reference(logits.double(), targets, valid, ref_sums)
    _close("loss", loss, ref, 1e-5)
    _close("loss sum", sums[:, 0], ref_sums[:, 0], 1e-5)
    assert sums[:, 2].tolist() == [41.0] * 3
    # independently: each run's loss sum is F.cross_entropy's over its first 41 rows
    for r in range(3):
        want = F.cross_entropy(logits[r, :41].double(), targets[:41], reduction="sum")
        assert abs(loss[r].item() - want.item()) <= 1e-5 * want.item()


def test_runs_do_not_mix():
    logits, targets, _ = _inputs((2, 64, 117), torch.float32, False, seed=2)
    other = logits.clone()
    other[1] = torch.randn(64, 117) * 5
    a, b = cross_entropy(logits, targets), cross_entropy(other, targets)
    assert a[0].item() == b[0].item() and a[1].item() != b[1].item()


def test_independent_of_torch_cross_entropy_and_argmax():
    """The default is the batch mean of F.cross_entropy, and the sums count torch.argmax's hits."""
    logits, targets, _ = _inputs((300, 117), torch.float32, False, seed=3)
    targets[:150] = logits[:150].argmax(-1)  # half the rows right, the rest mostly wrong
    x = logits.clone().requires_grad_()
    sums = torch.zeros(3, dtype=torch.float64)
    loss = cross_entropy(x, targets, sums=sums)
    loss.backward()
    y = logits.clone().requires_grad_()
    want = F.cross_entropy(y, targets)
    want.backward()
    assert abs(loss.item() - want.item()) <= 1e-6 * want.item()
    assert torch.allclose(x.grad, y.grad, rtol=1e-5, atol=1e-8)
    assert sums[1].item() == (logits.argmax(-1) == targets).sum().item() >= 150
    assert sums[2].item() == 300
    assert abs(sums[0].item() - 300 * want.item()) <= 1e-5 * 300 * want.item()


def test_rows_out_add_nothing_even_when_not_finite():
    logits, targets, _ = _inputs((20, 117), torch.float32, False, seed=4)
    weight = torch.full((20,), 1 / 17)
    weight[[0, 9, 19]] = 0.0
    logits[0, 3], logits[9] = float("nan"), float("inf")
    x = logits.clone().requires_grad_()
    sums = torch.zeros(3, dtype=torch.float64)
    loss = cross_entropy(x, targets, weight, sums)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sums).all() and torch.isfinite(x.grad).all()
    assert x.grad[[0, 9, 19]].abs().max().item() == 0.0
    ref = logits.clone().requires_grad_()  # the reference (the CPU and torch-backend path) keeps the same rule
    ref_sums = torch.zeros(3, dtype=torch.float64)
    cross_entropy_reference(ref, targets, weight, ref_sums).backward()
    assert torch.isfinite(ref.grad).all() and ref.grad[[0, 9, 19]].abs().max().item() == 0.0
    assert torch.isfinite(ref_sums).all()
    keep = weight != 0
    want = F.cross_entropy(logits[keep], targets[keep])
    assert abs(loss.item() - want.item()) <= 1e-6 * want.item()
    assert sums[2].item() == 17


def test_argmax_ties_go_to_the_lowest_class():
    """As torch.argmax: a row of equal logits predicts class 0. (The interpreter's argmax takes the first
    maximum whatever ``tie_break_left`` says; tests/gpu checks the compiled kernel.)"""
    logits = torch.zeros(4, 6)
    logits[2, [1, 4]] = 2.0  # a tie between classes 1 and 4
    targets = torch.tensor([0, 3, 1, 4])
    sums = torch.zeros(3, dtype=torch.float64)
    cross_entropy(logits, targets, sums=sums)
    assert sums[1].item() == 2 == (logits.argmax(-1) == targets).sum().item()


def test_without_autograd_no_gradient_is_written(monkeypatch):
    """An evaluation (no_grad): the same loss and sums as with autograd, and no gradient buffer at all."""
    logits, targets, weight = _inputs((3, 40, 117), torch.float32, True, seed=7)
    with_grad, without = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    want = cross_entropy(logits.clone().requires_grad_(), targets, weight, with_grad)
    shapes = []
    empty = ce_mod._empty
    monkeypatch.setattr(ce_mod, "_empty", lambda shape, dtype, device: (shapes.append(tuple(shape)),
                                                                        empty(shape, dtype, device))[1])
    with torch.no_grad():
        got = cross_entropy(logits.clone().requires_grad_(), targets, weight, without)
    assert torch.equal(got, want.detach()) and torch.equal(without, with_grad)
    assert tuple(logits.shape) not in shapes and shapes  # the partials and the loss, not the gradient


def test_sums_accumulate():
    logits, targets, _ = _inputs((10, 117), torch.float32, False, seed=5)
    sums = torch.zeros(3, dtype=torch.float64)
    cross_entropy(logits, targets, sums=sums)
    once = sums.clone()
    cross_entropy(logits, targets, sums=sums)
    assert torch.equal(sums, 2 * once)


def test_empty_batch():
    logits = torch.zeros(2, 0, 5, requires_grad=True)
    sums = torch.zeros(2, 3, dtype=torch.float64)
    loss = cross_entropy(logits, torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0), sums)
    assert loss.tolist() == [0.0, 0.0] and sums.abs().sum().item() == 0.0
    sums.fill_(7.0)
    cross_entropy(logits, torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0), sums, accumulate=False)
    assert sums.abs().sum().item() == 0.0  # set: the sums of no rows


@pytest.mark.parametrize("runs", [(), (3,)])
def test_sums_set_into_a_strided_row_and_the_counter_left_zero(runs):
    """``accumulate=False`` sets the sums -- what they held, NaN here, is not read -- into rows of a wider
    buffer (an evaluation's result), each run's own row, the column past them untouched; the caller's counter,
    taken by every program of a run (360 of them at the modular full batch), is left zero for the next call."""
    logits, targets, weight = _inputs((*runs, 2873, 117), torch.float32, True, seed=11)
    wide = torch.full((*runs, 5), float("nan"), dtype=torch.float64)
    wide[..., 4] = 42.0
    counter = torch.zeros(max((1, *runs)), dtype=torch.int32)
    want = torch.zeros(*runs, 3, dtype=torch.float64)
    ref = cross_entropy_reference(logits.double(), targets, weight, want)
    for _ in range(2):
        loss = cross_entropy(logits, targets, weight, wide[..., 1:4], accumulate=False, counter=counter)
        _close("loss", loss, ref, 1e-5)
        _close("loss sum", wide[..., 1], want[..., 0], 1e-5)
        assert torch.equal(wide[..., 2:4], want[..., 1:])
        assert torch.isnan(wide[..., 0]).all() and (wide[..., 4] == 42.0).all()
        assert counter.abs().sum().item() == 0
        wide[..., 1:4] = float("nan")  # the second call sets them again


def test_bf16_gradient_rounds_the_fp32_gradient():
    logits, targets, _ = _inputs((64, 117), torch.bfloat16, False, seed=6)
    x = logits.clone().requires_grad_()
    cross_entropy(x, targets).backward()
    y = logits.float().requires_grad_()
    F.cross_entropy(y, targets).backward()
    assert x.grad.dtype == torch.bfloat16
    assert (x.grad.float() - y.grad).abs().max().item() <= 2 ** -7 * y.grad.abs().max().item()


@pytest.mark.parametrize("args,match", [
    (dict(logits=torch.zeros(3)), "logits must be"),
    (dict(logits=torch.zeros(3, 4, dtype=torch.float64)), "logits has dtype float64"),
    (dict(logits=torch.zeros(3, MAX_V + 1)), "classes"),
    (dict(targets=torch.zeros(4, dtype=torch.long)), "targets must be int64 of shape"),
    (dict(targets=torch.zeros(3, dtype=torch.int32)), "targets must be int64"),
    (dict(weight=torch.zeros(3, dtype=torch.float64)), "weight must be float32"),
    (dict(sums=torch.zeros(2, dtype=torch.float64)), "sums must be"),
    (dict(sums=torch.zeros(3, dtype=torch.float32)), "sums must be"),
    (dict(sums=torch.zeros(6, dtype=torch.float64)[::2]), "each row contiguous"),
    (dict(logits=torch.zeros(2, 3, 4), sums=torch.zeros(3, dtype=torch.float64).expand(2, 3)), "apart"),
    (dict(counter=torch.zeros(1, dtype=torch.int64)), "counter must be"),
    (dict(counter=torch.zeros(0, dtype=torch.int32)), "counter must be"),
])
def test_bad_arguments_raise_one_clear_error(args, match):
    kw = dict(logits=torch.zeros(3, 4), targets=torch.zeros(3, dtype=torch.long), weight=None, sums=None,
              counter=None) | args
    with pytest.raises(ValueError, match=match):
        cross_entropy(kw["logits"], kw["targets"], kw["weight"], kw["sums"], counter=kw["counter"])


def test_compile_specs_cover_every_dispatched_configuration(monkeypatch):
    """Every (BLOCK_V, BLOCK_B, warps, weight, gradient, dtype) the launcher picks is one compile_specs()
    ships, and every pointer it passes has the shipped type (an absent weight or gradient included)."""
    spy = LaunchSpy(ce_mod._ce_kernel)
    monkeypatch.setattr(ce_mod, "_ce_kernel", spy)
    shipped = {(s.constexprs["BLOCK_V"], s.constexprs["BLOCK_B"], s.num_warps, s.constexprs["HAS_WEIGHT"],
                s.constexprs["STORE_GRAD"], s.signature["LOGITS"]) for s in ce_mod.compile_specs()
               if "BLOCK_V" in s.constexprs}
    names = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
    for v in (1, 2, 17, 117, 128, 129, 2048, 2049, MAX_V):
        for dtype in names:
            for weighted in (False, True):
                for grad in (False, True):
                    logits, targets, weight = _inputs((2, v), dtype, weighted, seed=v)
                    cross_entropy(logits.requires_grad_(grad), targets, weight)
                    args, kw = spy.calls[-1]
                    assert (kw["BLOCK_V"], kw["BLOCK_B"], kw["num_warps"], kw["HAS_WEIGHT"], kw["STORE_GRAD"],
                            names[dtype]) in shipped
                    assert kw["STORE_GRAD"] == grad
                    assert args[2].dtype == args[3].dtype == torch.float32  # WEIGHT, DLOGITS: *fp32
                    assert args[6].dtype == torch.float64 and args[7].dtype == torch.int32  # SUMS, COUNTER


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs", [(), (3,)])
def test_unit_seed_gives_the_gradient_of_a_ones_seed_without_a_product(dtype, runs):
    """Seeded with ``unit_seed``, the backward returns what a plain ones seed gives -- the float64
    reference's gradient -- and launches no product: nothing for fp32 logits, autograd's cast alone for bf16."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from kernels.fused_cross_entropy import unit_seed

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    logits, targets, weight = _inputs((*runs, 37, 11), dtype, True, seed=5)
    x = logits.clone().requires_grad_()
    seed = unit_seed(runs, "cpu")
    loss = cross_entropy(x, targets, weight)
    with Ops() as ops:
        loss.backward(seed)
    x64 = logits.double().requires_grad_()
    cross_entropy_reference(x64, targets, weight).backward(torch.ones(runs, dtype=torch.float64))
    assert x.grad.dtype == dtype
    _close("dlogits", x.grad, x64.grad, TOLERANCE[dtype])
    launched = [n for n in ops.names if n not in ("detach", "view", "_unsafe_view", "alias")]
    assert launched == ([] if dtype == torch.float32 else ["_to_copy"]), launched
    # a plain ones tensor (no mark) is multiplied as any gradient is, to the same result
    y = logits.clone().requires_grad_()
    cross_entropy(y, targets, weight).backward(torch.ones(runs))
    assert torch.equal(x.grad, y.grad)
