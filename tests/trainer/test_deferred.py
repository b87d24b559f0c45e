"""models/deferred.py: the models' gradients with the linear layers' weight gradients deferred to one launch
(the triton backend's step) equal autograd's own, for both models, solo and packed, fp32 and bf16 autocast.

The deferred weight gradients run the Triton kernel under the interpreter; the comparison is autograd
without deferral on the same model (an independent computation: cuBLAS-free ``mm`` and ``sum``)."""

import pytest
import torch

from grokfast_train.models import embedding_sum
from grokfast_train.models.decoder import Decoder
from grokfast_train.models.deferred import deferred
from grokfast_train.models.encoder import EncoderClassifier


def _grads(model, x, on, autocast=False):
    model.zero_grad(set_to_none=True)
    with deferred(on=on):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _model(kind, runs=None, layers=1):
    torch.manual_seed(0)
    if kind == "decoder":
        m = Decoder(20, hidden=32, heads=2, max_len=8, backend="triton", runs=runs, n_layers=layers)
    else:
        m = EncoderClassifier(50, hidden=32, heads=2, ffn=64, max_len=8, backend="triton", runs=runs,
                              n_layers=layers)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


def _compare(model, x, autocast=False, tol=1e-5):
    plain, held = _grads(model, x, False, autocast), _grads(model, x, True, autocast)
    assert plain.keys() == held.keys()
    for name in plain:
        err = (held[name] - plain[name]).abs().max().item() / max(1.0, plain[name].abs().max().item())
        assert err <= tol, f"{name}: {err:.3g}"
    return plain


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
@pytest.mark.parametrize("layers", [1, 2])
def test_a_model_gets_the_gradients_autograd_gives(kind, layers):
    # 2 layers: the first reads every position (q, k, v and the residual whole), the last its readout row
    x = torch.randint(1, 20, (9, 6))
    grads = _compare(_model(kind, layers=layers), x)
    assert "tok_emb.weight" in grads  # the decoder's tied head adds to the embedding's own gradient


def test_a_table_projected_twice_adds_both_uses(monkeypatch):
    # the decoder's first layer from its tables (the CPU's path): k and v weights each serve two products
    monkeypatch.setattr(embedding_sum.EmbeddingSum, "worth_it", staticmethod(lambda ids, tok: True))
    _compare(_model("decoder"), torch.randint(0, 20, (9, 6)))


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_a_pack_gets_the_gradients_autograd_gives(kind):
    _compare(_model(kind, runs=3), torch.randint(1, 20, (3, 5, 6)))


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_bf16_autocast_gives_fp32_gradients_near_autograds(kind):
    # autograd rounds each bf16 product's result to bf16 (~4e-3); the kernel keeps its fp32 sums
    grads = _compare(_model(kind), torch.randint(1, 20, (9, 6)), autocast=True, tol=2e-2)
    assert all(g.dtype == torch.float32 for g in grads.values())
