"""The reference init, ``kernels.scaled_init_reference_``: the init of every real CPU run.

The trainer initialises on the CPU, where ``kernels.scaled_init_`` (without the interpreter) runs
the reference, so every initial weight of every run comes from it. It is checked here against
things it does not compute itself:

* an exact identity: init with (std, alpha) equals init with (1, 1) from the same seed, with the
  drawn weights multiplied by std and then alpha (the same float32 operations, so bit-equal);
* its documented stream: a ``torch.Generator`` seeded with ``seed`` drawing each distinct weight
  in module order -- rebuilt here independently;
* a large-sample normality check against N(0, (std*alpha)^2): n = 1.3 M draws; the sample std must
  lie within 6 standard errors (6 / sqrt(2n) = 0.37 %) of std*alpha, the mean within 6 standard
  errors of 0, the fourth moment within 6 standard errors of 3, and the Kolmogorov-Smirnov distance
  to the normal CDF below the p = 1e-9 critical value sqrt(ln(2 / 1e-9) / 2n) = 0.29 %.
  Doubling the std, or an std off by 1 %, fails;
* the rules: biases 0, padding row 0, LayerNorm weight alpha and bias 0, a parameter no rule
  touches x alpha, a tied weight drawn once and scaled once.
"""

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import kernels
import kernels.init as init_mod
from kernels.init import scaled_init_reference_

STD, ALPHA, SEED = 0.02, 10.0, 1234


class Model(nn.Module):
    """Every case the rules name, with about 1.3 M normally drawn weights."""

    def __init__(self, vocab=2000, hidden=512, pad=3):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden, padding_idx=pad)
        self.raw = nn.Parameter(torch.linspace(-1, 1, 5 * hidden).reshape(5, hidden))  # no rule: x alpha only
        self.ln = nn.LayerNorm(hidden)
        self.ff1 = nn.Linear(hidden, 256)
        self.ff2 = nn.Linear(256, hidden, bias=False)
        self.ln2 = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab)
        self.out.weight = self.tok.weight  # tied: drawn once (as tok), scaled once

    def drawn(self):
        """The normally drawn tensors, in module order, each once."""
        return [self.tok.weight, self.ff1.weight, self.ff2.weight]


def _poisoned(seed=0):
    torch.manual_seed(seed)
    model = Model()
    with torch.no_grad():
        for p in model.parameters():
            if p is not model.raw:
                p.fill_(float("nan"))
    return model


def _init(std, alpha, seed=SEED):
    model = _poisoned()
    scaled_init_reference_(model, std=std, alpha=alpha, seed=seed)
    return model


@pytest.fixture(scope="module")
def paper():
    return _init(STD, ALPHA)


def test_std_and_alpha_are_an_exact_scaling_of_the_unit_draw(paper):
    unit = _init(1.0, 1.0)
    for a, u in zip(paper.drawn(), unit.drawn()):
        assert torch.equal(a.detach(), u.detach() * STD * ALPHA)  # randn * std, then x alpha, in float32
    for ln in (paper.ln, paper.ln2):
        assert torch.equal(ln.weight.detach(), torch.full_like(ln.weight, ALPHA))
    assert torch.equal(unit.ln.weight.detach(), torch.ones_like(unit.ln.weight))


def test_the_documented_stream_rebuilt_independently(paper):
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    for w in paper.drawn():  # module order: tok, ff1, ff2 (out is tok, drawn once)
        want = torch.randn(w.shape, generator=gen, dtype=torch.float32) * STD * ALPHA
        if w is paper.tok.weight:
            want[3] = 0  # the padding row
        assert torch.equal(w.detach(), want)
    other = _init(STD, ALPHA, seed=SEED + 1)
    assert not torch.equal(other.ff1.weight, paper.ff1.weight)


def test_large_sample_is_normal_with_std_times_alpha(paper):
    target = STD * ALPHA
    tok = paper.tok.weight.detach()
    w = torch.cat([tok[torch.arange(tok.shape[0]) != 3].flatten(), paper.ff1.weight.detach().flatten(),
                   paper.ff2.weight.detach().flatten()]).double()
    n = w.numel()
    assert n > 1_200_000
    se_std = 1 / math.sqrt(2 * n)
    assert abs(w.mean().item()) < 6 * target / math.sqrt(n)
    assert abs(w.std().item() / target - 1) < 6 * se_std
    z = w / target
    assert abs(z.pow(4).mean().item() - 3) < 6 * math.sqrt(96 / n)  # var of z^4 under N(0,1) is 105 - 9 = 96
    # Kolmogorov-Smirnov distance to the N(0, target^2) CDF
    zs, _ = torch.sort(z)
    cdf = 0.5 * torch.erfc(-zs / math.sqrt(2))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = max((i / n - cdf).max().item(), (cdf - (i - 1) / n).max().item())
    assert d < math.sqrt(math.log(2 / 1e-9) / (2 * n)), d
    # each tensor on its own (the smallest holds 131 k draws)
    for t in paper.drawn():
        t = t.detach().double().flatten()
        t = t[t != 0]
        assert abs(t.std().item() / target - 1) < 6 / math.sqrt(2 * t.numel())
    # distinct tensors are distinct parts of the stream, not the same draw again
    a, b = paper.ff1.weight.detach().flatten()[:4096], paper.ff2.weight.detach().flatten()[:4096]
    assert not torch.equal(a, b) and abs(torch.corrcoef(torch.stack([a, b]).double())[0, 1].item()) < 0.1


def test_the_rules(paper):
    tok = paper.tok.weight.detach()
    assert torch.count_nonzero(tok[3]) == 0
    assert torch.count_nonzero(tok.abs().sum(1)) == tok.shape[0] - 1  # only the padding row
    assert paper.out.weight is paper.tok.weight
    for ln in (paper.ln, paper.ln2):
        assert torch.equal(ln.weight.detach(), torch.full_like(ln.weight, ALPHA))
        assert torch.count_nonzero(ln.bias) == 0
    assert torch.count_nonzero(paper.ff1.bias) == 0 and torch.count_nonzero(paper.out.bias) == 0
    raw = torch.linspace(-1, 1, 5 * 512).reshape(5, 512)
    assert torch.equal(paper.raw.detach(), raw * ALPHA)
    for p in paper.parameters():
        assert torch.isfinite(p).all()  # every parameter written


def test_dispatch_through_scaled_init_is_the_reference(monkeypatch, paper):
    """kernels.scaled_init_ on CPU tensors without the interpreter is the reference, bit for bit."""
    monkeypatch.setattr(init_mod, "use_triton", lambda *t: False)
    model = _poisoned()
    kernels.scaled_init_(model, std=STD, alpha=ALPHA, seed=SEED)
    for a, b in zip(model.parameters(), paper.parameters()):
        assert torch.equal(a.detach(), b.detach())


def test_a_process_without_the_interpreter_runs_the_reference():
    """As a real CPU run starts: a fresh process with TRITON_INTERPRET=0 (nothing monkeypatched)."""
    code = (
        "import torch, kernels\n"
        "from torch import nn\n"
        "from kernels.init import scaled_init_reference_\n"
        "a = nn.Sequential(nn.Embedding(50, 16, padding_idx=1), nn.Linear(16, 16), nn.LayerNorm(16))\n"
        "b = nn.Sequential(nn.Embedding(50, 16, padding_idx=1), nn.Linear(16, 16), nn.LayerNorm(16))\n"
        "kernels.scaled_init_(a, std=0.02, alpha=10.0, seed=5)\n"
        "scaled_init_reference_(b, std=0.02, alpha=10.0, seed=5)\n"
        "assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))\n"
        "assert torch.equal(a[2].weight.detach(), torch.full((16,), 10.0))\n"
        "print('reference')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "reference", proc.stderr
