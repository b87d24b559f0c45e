"""The models against transformers (a test-only dependency, from the dev extra), and the
readout-only path against the full computation.

Parity: our weights are copied into ``BertForSequenceClassification`` / ``OpenAIGPTLMHeadModel``
(eager attention, dropout 0); logits and the gradient of every parameter of a random linear
functional of the logits must agree to
    max|ours - theirs| <= RTOL * max(1, max|theirs|),  RTOL = 1e-5 in fp32, 1e-10 in fp64.
Every parameter is randomised (biases and LayerNorms too) so that a swapped or dropped tensor
shows. fp32 runs at init std 0.02, α = 1; the paper's α = 10 runs in fp64, because there the
attention is nearly one-hot and fp32 rounding alone (HF's own fp32 against fp64) reaches
~3e-4 of the largest gradient -- no fp32 tolerance could tell a bug from rounding there.
Readout-only vs full (same weights, different row sets): the same two settings and bounds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, OpenAIGPTConfig, OpenAIGPTLMHeadModel

import kernels
from grokfast_train.config import Config, resolve
from grokfast_train.data.task import TaskData
from grokfast_train.models import Decoder, EncoderClassifier, build_model, ops, resolve_backend

RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
VOCAB = 100


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> float:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} vs {theirs.dtype}"
    err = (ours - theirs).abs().max().item()
    bound = RTOL[theirs.dtype] * max(1.0, theirs.abs().max().item())
    assert err <= bound, f"{what}: max abs diff {err:.3g} > {bound:.3g}"
    return err


@torch.no_grad()
def randomise_(model: nn.Module, std: float, alpha: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            base = 1.0 if isinstance(m, nn.LayerNorm) and name == "weight" else 0.0
            spread = 0.1 if isinstance(m, nn.LayerNorm) else std
            p.copy_((base + spread * torch.randn(p.shape, generator=gen)) * alpha)


def padded_batch(B: int, L: int, seed: int, vocab: int = VOCAB, pad_id: int = 0):
    """Right-padded ids (never pad_id at real positions) and their bool mask; row 0 is full length."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (B, L), generator=gen)
    lengths = torch.randint(1, L + 1, (B,), generator=gen)
    lengths[0] = L
    mask = torch.arange(L)[None, :] < lengths[:, None]
    return x.masked_fill(~mask, pad_id), mask


def loss_of(logits: torch.Tensor, seed: int) -> torch.Tensor:
    r = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed)).to(logits.dtype)
    return (logits * r).sum()


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# --- weight maps: (our name, HF name, transpose, chunk of HF's fused q|k|v along the last dim) ---

def bert_map(n_layers: int):
    rows = [("tok_emb.weight", "bert.embeddings.word_embeddings.weight"),
            ("pos_emb.weight", "bert.embeddings.position_embeddings.weight"),
            ("type_emb.weight", "bert.embeddings.token_type_embeddings.weight"),
            ("emb_ln.weight", "bert.embeddings.LayerNorm.weight"), ("emb_ln.bias", "bert.embeddings.LayerNorm.bias"),
            ("pooler.weight", "bert.pooler.dense.weight"), ("pooler.bias", "bert.pooler.dense.bias"),
            ("head.weight", "classifier.weight"), ("head.bias", "classifier.bias")]
    names = dict(q="attention.self.query", k="attention.self.key", v="attention.self.value",
                 o="attention.output.dense", ln1="attention.output.LayerNorm", fc1="intermediate.dense",
                 fc2="output.dense", ln2="output.LayerNorm")
    for i in range(n_layers):
        for ours, theirs in names.items():
            for t in ("weight", "bias"):
                rows.append((f"layers.{i}.{ours}.{t}", f"bert.encoder.layer.{i}.{theirs}.{t}"))
    return [(o, h, False, None) for o, h in rows]


def gpt_map(n_layers: int):
    rows = [("tok_emb.weight", "transformer.tokens_embed.weight", False, None),
            ("pos_emb.weight", "transformer.positions_embed.weight", False, None)]
    for i in range(n_layers):
        h = f"transformer.h.{i}"
        for t in ("weight", "bias"):
            tr = t == "weight"  # HF's Conv1D stores weights as (in, out)
            for c, ours in enumerate("qkv"):
                rows.append((f"layers.{i}.{ours}.{t}", f"{h}.attn.c_attn.{t}", tr, c))
            rows += [(f"layers.{i}.o.{t}", f"{h}.attn.c_proj.{t}", tr, None),
                     (f"layers.{i}.fc1.{t}", f"{h}.mlp.c_fc.{t}", tr, None),
                     (f"layers.{i}.fc2.{t}", f"{h}.mlp.c_proj.{t}", tr, None),
                     (f"layers.{i}.ln1.{t}", f"{h}.ln_1.{t}", False, None),
                     (f"layers.{i}.ln2.{t}", f"{h}.ln_2.{t}", False, None)]
    return rows


def hf_view(t: torch.Tensor, transpose: bool, chunk: int | None) -> torch.Tensor:
    """The part of an HF tensor that one of our tensors maps to, in our layout."""
    if chunk is not None:
        n = t.shape[-1] // 3
        t = t[..., chunk * n:(chunk + 1) * n]
    return t.T if transpose else t


@torch.no_grad()
def copy_to_hf(ours: nn.Module, hf: nn.Module, mapping) -> None:
    mine, theirs = dict(ours.named_parameters()), dict(hf.named_parameters())
    assert sorted(o for o, *_ in mapping) == sorted(mine), "the map must name each of our parameters once"
    covered = {h: 0 for h in theirs}
    for o, h, tr, chunk in mapping:
        hf_view(theirs[h], tr, chunk).copy_(mine[o])
        covered[h] += mine[o].numel()
    assert covered == {h: p.numel() for h, p in theirs.items()}, "every HF parameter must be set exactly"


def compare_grads(ours: nn.Module, hf: nn.Module, mapping) -> float:
    theirs = dict(hf.named_parameters())
    mine = dict(ours.named_parameters())
    return max(assert_close(mine[o].grad, hf_view(theirs[h].grad, tr, chunk), f"grad {o}")
               for o, h, tr, chunk in mapping)


# --- encoder vs BertForSequenceClassification ---

F32, F64 = "float32", "float64"  # strings: readable test ids
PAPER_ENCODER = (128, 4, 512, 1, 253, 10.0, F64)  # the paper's layer, max_len 256


@pytest.mark.parametrize("hidden,heads,ffn,n_layers,L,alpha,dtype", [
    (32, 4, 64, 1, 12, 1.0, F32), (32, 4, 64, 3, 12, 1.0, F32), (128, 4, 512, 1, 253, 1.0, F32),
    (32, 4, 64, 3, 12, 10.0, F64), PAPER_ENCODER,
])
@pytest.mark.parametrize("readout_only", [True, False])
def test_encoder_matches_bert(hidden, heads, ffn, n_layers, L, alpha, dtype, readout_only):
    ours = EncoderClassifier(VOCAB, hidden=hidden, n_layers=n_layers, heads=heads, ffn=ffn, max_len=L + 3,
                             num_classes=3, readout_only=readout_only)
    randomise_(ours, std=0.02, alpha=alpha, seed=1)
    hf = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=heads,
        intermediate_size=ffn, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=L + 3, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, num_labels=3,
        attn_implementation="eager"))
    hf.eval()  # dropout 0 anyway; eval() only makes the point
    mapping = bert_map(n_layers)
    ours.to(getattr(torch, dtype)), hf.to(getattr(torch, dtype))
    copy_to_hf(ours, hf, mapping)

    x, mask = padded_batch(5, L, seed=2)
    assert not mask.all()
    logits = ours(x, mask)
    ref = hf(input_ids=x, attention_mask=mask.long()).logits
    assert_close(logits, ref, "logits")
    loss_of(logits, 3).backward()
    loss_of(ref, 3).backward()
    compare_grads(ours, hf, mapping)
    assert ours.tok_emb.weight.grad[0].abs().max() == 0  # pad row: BERT's padding_idx


def test_encoder_padding_is_masked():
    """What sits at padded positions must not change the logits (or HF parity could hide a shared bug)."""
    model = EncoderClassifier(VOCAB, hidden=32, heads=4, ffn=64, max_len=16)
    randomise_(model, 0.02, 10.0, seed=4)
    x, mask = padded_batch(4, 16, seed=5)
    other = torch.where(mask, x, torch.randint(1, VOCAB, x.shape, generator=torch.Generator().manual_seed(6)))
    assert not torch.equal(other, x)
    torch.testing.assert_close(model(other, mask), model(x, mask), rtol=0, atol=0)
    assert (model(other) - model(x)).abs().max() > 1e-3  # and without the mask it would


# --- decoder vs OpenAIGPTLMHeadModel ---

@pytest.mark.parametrize("hidden,heads,n_layers,L,alpha,dtype", [
    (32, 4, 1, 9, 1.0, F32), (32, 4, 3, 9, 1.0, F32), (128, 4, 1, 4, 1.0, F32),  # 4: the modular task's length
    (32, 4, 3, 9, 10.0, F64), (128, 4, 1, 4, 10.0, F64),
])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("batch", [6, VOCAB + 1])  # VOCAB + 1: the first layer projects from the tables
def test_decoder_matches_openai_gpt(hidden, heads, n_layers, L, alpha, dtype, padded, batch):
    ours = Decoder(VOCAB, hidden=hidden, n_layers=n_layers, heads=heads, max_len=L + 2)
    randomise_(ours, std=0.02, alpha=alpha, seed=6)
    hf = OpenAIGPTLMHeadModel(OpenAIGPTConfig(
        vocab_size=VOCAB, n_positions=L + 2, n_embd=hidden, n_layer=n_layers, n_head=heads, afn="gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5))
    hf.eval()
    assert hf.lm_head.weight is hf.transformer.tokens_embed.weight
    mapping = gpt_map(n_layers)
    ours.to(getattr(torch, dtype)), hf.to(getattr(torch, dtype))
    copy_to_hf(ours, hf, mapping)

    x, mask, out = *padded_batch(batch, L, seed=7), []
    if not padded:
        mask = None
    hf_mask = None if mask is None else mask.long()
    # every position
    logits = ours.forward_all(x, mask)
    ref = hf(input_ids=x, attention_mask=hf_mask).logits
    assert_close(logits, ref, "logits (all positions)")
    loss_of(logits, 8).backward()
    loss_of(ref, 8).backward()
    compare_grads(ours, hf, mapping)
    # the readout: last position (the modular task's) and one in the middle
    for r in (L - 1, L // 2):
        ours.zero_grad(), hf.zero_grad()
        first, _ = rows_seen(ours, lambda: out.append(ours(x, mask, readout_pos=r)))
        # the tables' rows, or the positions up to r (which a readout first layer attends to without keys)
        assert first == (VOCAB if batch > VOCAB else r + 1 if n_layers > 1 else ("x", r + 1))
        logits = out.pop()
        ref = hf(input_ids=x, attention_mask=hf_mask).logits[:, r]
        assert_close(logits, ref, f"logits at {r}")
        loss_of(logits, 9).backward()
        loss_of(ref, 9).backward()
        compare_grads(ours, hf, mapping)


# --- readout-only vs the full computation ---

def rows_seen(model: nn.Module, run) -> tuple[int | tuple[str, int], int]:
    """What the first layer's keys come from during ``run()`` -- the rows entering its key projection
    (positions per sequence, or the token table's rows where the decoder projects the embedding tables),
    or ("x", positions) where it projects no key (a readout layer on the torch backend attends from its
    input x itself: readout_attention.py) -- and the rows entering the last layer's FFN."""
    seen = {}
    hooks = [model.layers[0].k.register_forward_hook(lambda m, i, o: seen.__setitem__("first", i[0].shape[-2])),
             model.layers[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("input", i[0].shape[-2])),
             model.layers[-1].fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("last", i[0].shape[-2]))]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen.get("first", ("x", seen["input"])), seen["last"]


def readout_vs_full(model: nn.Module, run, seed: int):
    out = {}
    for readout_only in (True, False):
        model.readout_only = readout_only
        model.zero_grad()
        rows = rows_seen(model, lambda: out.__setitem__(readout_only, run()))
        loss_of(out[readout_only], seed).backward()
        out[readout_only, "grads"], out[readout_only, "rows"] = grads(model), rows
    assert_close(out[True], out[False], "logits")
    for n, g in out[False, "grads"].items():
        assert_close(out[True, "grads"][n], g, f"grad {n}")
    return out[True, "rows"], out[False, "rows"]


SCALES = [(1.0, F32), (10.0, F64)]  # (α, dtype): see the module docstring


@pytest.mark.parametrize("alpha,dtype", SCALES)
@pytest.mark.parametrize("n_layers", [1, 3])
def test_encoder_readout_only_equals_full(n_layers, alpha, dtype):
    L = 13
    model = EncoderClassifier(VOCAB, hidden=32, n_layers=n_layers, heads=4, ffn=64, max_len=L).to(getattr(torch, dtype))
    randomise_(model, 0.02, alpha, seed=10 + n_layers)
    x, mask = padded_batch(5, L, seed=12)
    fast, full = readout_vs_full(model, lambda: model(x, mask), seed=13)
    assert fast == ((L if n_layers > 1 else ("x", L)), 1) and full == (L, L)


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("r", [0, 4, 10])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("alpha,dtype", SCALES)
@pytest.mark.parametrize("batch", [5, VOCAB + 3])
def test_decoder_readout_only_equals_full(n_layers, r, padded, alpha, dtype, batch):
    """With more sequences than tokens the readout path's first layer projects the embedding tables
    (``embedding_sum.py``); the full computation always projects every position."""
    L = 11
    model = Decoder(VOCAB, hidden=32, n_layers=n_layers, heads=4, max_len=L).to(getattr(torch, dtype))
    randomise_(model, 0.02, alpha, seed=20 + n_layers)
    x, mask = padded_batch(batch, L, seed=22)
    mask = mask if padded else None
    fast, full = readout_vs_full(model, lambda: model(x, mask, readout_pos=r), seed=23)
    first = VOCAB if batch > VOCAB else r + 1 if n_layers > 1 else ("x", r + 1)  # positions after r never computed
    assert fast == (first, 1) and full == (L, L)


# --- the attention op itself ---

@pytest.mark.parametrize("Lq,Lk", [(1, 7), (5, 5), (3, 8)])
def test_attention_masks_against_explicit_softmax(Lq, Lk):
    gen = torch.Generator().manual_seed(30)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen) for n in (Lq, Lk, Lk))
    kpm = torch.rand(2, Lk, generator=gen) < 0.7
    kpm[:, 0] = True
    for causal in (False, True):
        for mask in (None, kpm):
            allowed = torch.ones(Lq, Lk, dtype=torch.bool)
            if causal:
                allowed = torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None] + Lk - Lq
            if mask is not None:
                allowed = allowed & mask[:, None, None, :]
            s = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~allowed, float("-inf"))
            torch.testing.assert_close(ops.attention(q, k, v, mask, causal), s.softmax(-1) @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("runs", [None, 3])
@pytest.mark.parametrize("row", [0, 6])
def test_readout_attention_equals_attention_over_the_projected_keys(runs, row):
    """``readout_attention`` (no key or value projected; its backward written out) against ``ops.attention``
    over x's projected query row, keys and values, in float64: the output, the residual row, and the gradients
    of x and of every weight and bias; a key padding mask that leaves one sequence no key at all (its output
    0, as SDPA's), heads of 8, the query at the first row and the last, solo and as a pack (each run its own
    weights and rows)."""
    from grokfast_train.models.readout_attention import readout_attention

    gen = torch.Generator().manual_seed(40)
    lead, R = ((5,), ()) if runs is None else ((runs, 5), (runs,))
    H, D, L = 3, 8, 7
    C = H * D
    leaves = [torch.randn(*lead, L, C, generator=gen)] + [
        torch.randn(*R, *shape, generator=gen) for shape in ((C, C), (C,)) * 3]
    x, wq, bq, wk, bk, wv, bv = (t.double().requires_grad_() for t in leaves)
    mask = torch.rand(*lead, L, generator=gen) < 0.6
    mask[..., 1, :] = False  # a sequence with no key
    mask[..., 2, :] = True

    def plain():
        per_run = (lambda t: t) if runs is None else (lambda t: t.unsqueeze(1))  # noqa: E731 (a pack's weights)
        q, k, v = (x @ per_run(w).transpose(-1, -2) + b.unsqueeze(-2).unsqueeze(-2)
                   for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        heads = lambda t: t.reshape(-1, t.shape[-2], H, D).transpose(1, 2)  # noqa: E731
        a = ops.attention(heads(q[..., row:row + 1, :]), heads(k), heads(v), mask.reshape(-1, L))
        return a.transpose(1, 2).reshape(*lead, 1, C), x[..., row:row + 1, :]

    out = {}
    weights = torch.linspace(-1, 2, C, dtype=torch.float64)
    for name, fn in (("readout", lambda: readout_attention(x, wq, bq, wk, bk, wv, bv, H, mask, row)),
                     ("plain", plain)):
        y, res = fn()
        ((y * weights).sum() + (res * weights.flip(0)).sum() * 0.5).backward()
        out[name] = [y.detach(), res.detach()] + [t.grad.clone() for t in (x, wq, bq, wk, bk, wv, bv)]
        for t in (x, wq, bq, wk, bk, wv, bv):
            t.grad = None
    assert out["readout"][0][..., 1, :, :].abs().max() == 0  # no key: 0
    for name, a, b in zip(("y", "residual", "dx", "dwq", "dbq", "dwk", "dbk", "dwv", "dbv"), out["readout"],
                          out["plain"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_attention_refuses_a_float_mask():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(TypeError, match="bool"):
        ops.attention(q, q, q, key_padding_mask=torch.ones(1, 2))


@pytest.mark.parametrize("cls", [EncoderClassifier, Decoder])
@pytest.mark.parametrize("readout_only", [True, False])
def test_triton_backend_matches_torch(cls, readout_only):
    """backend="triton" routes attention and LayerNorm to ``kernels`` (here: the Triton kernels
    under the interpreter, see conftest.py); same function as the torch backend. Head dim 16:
    the attention kernel's smallest."""
    kw = dict(hidden=64, n_layers=2, heads=4, ffn=128, max_len=12, readout_only=readout_only)
    ref, fused = cls(VOCAB, **kw), cls(VOCAB, backend="triton", **kw)
    assert all(layer.backend == "triton" for layer in fused.layers)
    randomise_(ref, 0.02, 1.0, seed=31)
    fused.load_state_dict(ref.state_dict())
    x, mask = padded_batch(3, 12, seed=32)
    out = {}
    for name, model in (("torch", ref), ("triton", fused)):
        out[name] = model(x, mask)
        loss_of(out[name], 33).backward()
    assert_close(out["triton"], out["torch"], "logits")
    for (n, a), b in zip(fused.named_parameters(), ref.parameters()):
        assert_close(a.grad, b.grad, f"grad {n}")


@pytest.mark.parametrize("cls,layers,runs,held", [(EncoderClassifier, 1, None, True), (EncoderClassifier, 1, 2, True),
                                                   (Decoder, 2, None, True), (EncoderClassifier, 1, 2, False)])
def test_triton_readout_kernels_match_the_torch_backend(cls, layers, runs, held, monkeypatch):
    """Sequences of ``MIN_KEYS`` or more: the triton backend's readout layer is ``kernels.readout_attention``'s two
    launches (no key projected), its weight gradients the weight-gradient launch's inside ``deferred()`` -- the
    step's path -- and match the torch backend's, solo and packed (a pack's weights strided views of the
    optimiser's buffer, where the gradients land; and outside it, where the weight gradients are computed on the
    spot); and a 2-layer decoder's readout layer (causal: the keys up to its
    readout position, here one before the last). Weights at std 0.2, so that the attention is far from
    uniform and every gradient large enough to compare relative to its own size (bk's, exactly 0, is rounding:
    absolute)."""
    import kernels.readout_attention as kra
    from grokfast_train.models.deferred import deferred

    calls = []
    for name in ("readout_attention_forward", "readout_attention_backward"):
        real = getattr(kra, name)
        monkeypatch.setattr(kra, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    L = kra.MIN_KEYS + 3
    kw = dict(hidden=32, n_layers=layers, heads=4, ffn=64, max_len=L, runs=runs)
    ref, fused = cls(VOCAB, **kw), cls(VOCAB, backend="triton", **kw)
    randomise_(ref, 0.2, 1.0, seed=41)
    fused.load_state_dict(ref.state_dict())
    x, mask = padded_batch(3 * (runs or 1), L, seed=42)
    mask[1] = False  # a sequence with no key
    if runs:
        x, mask = x.view(runs, 3, L), mask.view(runs, 3, L)
    views = (kernels.FusedAdamW(list(fused.parameters())) if runs is None else
             kernels.PackedAdamW(list(fused.parameters()), [{}] * runs, kernel=False)).grad_views()
    where = {} if cls is EncoderClassifier else dict(readout_pos=L - 2)  # the decoder's keys: positions 0..L-2
    with deferred(on=held, into=views):
        out = fused(x, mask, **where)
        loss_of(out, 43).backward()
    ref_out = ref(x, mask, **where)
    loss_of(ref_out, 43).backward()
    assert calls == ["readout_attention_forward", "readout_attention_backward"]
    assert_close(out, ref_out, "logits")
    for (n, a), b in zip(fused.named_parameters(), ref.parameters()):
        assert a.grad is views[a] or not held, n
        if n.endswith("k.bias"):
            assert_close(a.grad, b.grad, f"grad {n}")
        else:
            err = (a.grad - b.grad).abs().max().item() / b.grad.abs().max().item()
            assert err <= 1e-4, f"grad {n}: {err:.3g} of its largest"


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        EncoderClassifier(VOCAB, hidden=32, backend="cuda")


# --- build_model ---

def task_data(name, vocab, num_classes, L, readout_pos, pad_id=None, padded=False):
    x = torch.randint(1, vocab, (8, L))
    mask = None
    if padded:
        x, mask = padded_batch(8, L, seed=40, vocab=vocab, pad_id=pad_id)
    y = torch.randint(0, num_classes, (8,))
    return TaskData(name=name, source="hand-made", train_x=x, train_y=y, test_x=x, test_y=y, vocab_size=vocab,
                    num_classes=num_classes, readout_pos=readout_pos, pool_size=8, train_mask=mask,
                    test_mask=mask, pad_id=pad_id)


def test_build_model_modular():
    cfg = resolve(Config(dataset="modular", hidden=32, heads=4, ffn=128, n_layers=2, backend="torch"))
    task = task_data("modular", vocab=116, num_classes=116, L=4, readout_pos=3)
    model = build_model(cfg, task)
    assert isinstance(model, Decoder) and model.max_len == 4 and len(model.layers) == 2
    assert model.layers[0].fc1.out_features == 128
    kernels.scaled_init_(model, std=0.02, alpha=10.0, seed=0)
    logits = model(task.train_x, task.train_mask)
    assert logits.shape == (8, 116)
    torch.testing.assert_close(logits, model.forward_all(task.train_x)[:, 3], rtol=1e-5, atol=1e-4)
    # the tied LM head is the embedding: one tensor, initialised (and scaled by alpha) once
    assert sum(p is model.tok_emb.weight for p in model.parameters()) == 1
    assert 0.18 < model.tok_emb.weight.std().item() < 0.22


@pytest.mark.parametrize("dataset", ["imdb", "yelp"])
def test_build_model_text(dataset):
    cfg = resolve(Config(dataset=dataset, hidden=32, heads=4, ffn=64, n_layers=1, max_len=16, backend="torch"))
    task = task_data(dataset, vocab=50, num_classes=2, L=16, readout_pos=0, pad_id=3, padded=True)
    model = build_model(cfg, task)
    assert isinstance(model, EncoderClassifier) and model.max_len == 16
    assert model.tok_emb.padding_idx == 3
    kernels.scaled_init_(model, std=0.02, alpha=10.0, seed=0)
    assert model.tok_emb.weight[3].abs().max() == 0
    assert model(task.train_x, task.train_mask).shape == (8, 2)


def test_build_model_rejects_inconsistent_tasks():
    cfg = resolve(Config(dataset="imdb", hidden=32, heads=4, ffn=64, max_len=8, backend="torch"))
    with pytest.raises(ValueError, match="max-len"):
        build_model(cfg, task_data("imdb", 50, 2, L=16, readout_pos=0, pad_id=0))
    with pytest.raises(ValueError, match="position 0"):
        build_model(cfg, task_data("imdb", 50, 2, L=8, readout_pos=2, pad_id=0))


def test_resolve_backend():
    from grokfast_train.errors import UsageError

    def cfg(**kw):
        return resolve(Config(dataset="modular", **kw))
    assert resolve_backend(cfg(device="cpu")) == "torch"
    assert resolve_backend(cfg(device="cuda", hidden=128, heads=4)) == "triton"  # head dim 32
    # Every head size of the paper's model-wise grid (hidden 16..256 by 16, 4 heads: 4, 8, ..., 64)
    # and the kernel's extremes take the fused path; past 128 there is no kernel.
    for hidden, heads in [(16 * i, 4) for i in range(1, 17)] + [(7, 7), (128, 1), (100, 1)]:
        assert resolve_backend(cfg(device="cuda", hidden=hidden, heads=heads)) == "triton", (hidden, heads)
    assert resolve_backend(cfg(device="cuda", hidden=516, heads=4)) == "torch"  # head dim 129: no kernel
    with pytest.raises(UsageError, match="1 to 128, not 256"):
        resolve_backend(cfg(device="cuda", hidden=256, heads=1, backend="triton"))
    assert resolve_backend(cfg(device="cpu", backend="triton")) == "triton"  # asked for: taken as asked
    assert resolve_backend(cfg(device="cuda", backend="torch")) == "torch"
