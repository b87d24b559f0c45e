"""One full training step at the paper's two shapes: this trainer against what a user would run instead.

Shapes (the paper's): IMDB -- batch 128 x 256 tokens, hidden 128, 1 layer, 4 heads, FFN 512, vocab
30,522 (random tokens with padding: speed does not depend on what they say); modular -- batch 512 of
the paper's 7-token "a + b % 113 = c" sequences (the real data), hidden 128, 1 layer, vocab 117.

Rows (one pytest-benchmark group per shape and device, so every ratio is side by side):
  trainer-triton-graph       this trainer: Triton kernels + FusedAdamW, the step replayed from a CUDA
                             graph, K steps per replay (K = the trainer's choice for the preset's eval
                             interval: 8 for IMDB, 5 for modular); -k1: one step per replay; -bf16: --dtype bf16;
                             -pdl: every kernel launched with programmatic dependent launch (sm_90+; kernels._pdl)
  trainer-triton             the same kernels launched op by op (--cuda-graph off)
  trainer-torch              the trainer's torch backend (PyTorch ops, torch.optim.AdamW(fused=True))
  trainer-torch-full         the same without "compute only what the loss reads" (every position, every layer)
  compile-<mode>             torch.compile of the trainer's torch-backend model (batch gather, forward, loss,
                             metric) + torch.optim.AdamW(fused=True): max-autotune-no-cudagraphs and
                             reduce-overhead (CUDA graphs) on a GPU, the default mode on the CPU
  paper-hf                   the paper's loop: transformers' BertForSequenceClassification (IMDB) /
                             OpenAIGPTLMHeadModel (modular, labels -100 but the answer) fed by a DataLoader
                             under itertools.cycle, torch.optim.AdamW, and every step the host reads the loss,
                             the accuracy and the weight norm (as the paper's script logs them)
Every row does the whole step -- batch, forward, backward, optimiser, metrics -- and the trainer rows
keep their metrics on the device as the trainer does. A round is ``steps_per_round`` consecutive steps
(the queue is not drained between them, as in a real run) ended by one synchronisation; the table
(scripts/bench_table.py) divides by it. extra_info records the device, versions, dtype, K and the
shape the physical floor is computed from.

Run: ``pytest benchmarks/test_step_bench.py`` (CPU rows always; CUDA rows where a GPU is present), or
``-k cuda`` / ``-k cpu``. scripts/gpu_check.sh runs it per shape with JSON output.
"""

from __future__ import annotations

import itertools
import platform

import pytest
import torch
import torch.nn.functional as F

from grokfast_train.config import Config, resolve
from grokfast_train.data import load_task
from grokfast_train.data.task import TaskData
from grokfast_train.train import Run
from kernels import pdl_enabled, set_pdl

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DATASETS = ["modular", "imdb"]
STEPS_PER_ROUND = {"cpu": 1, "cuda": 40}  # 40: a multiple of every K used (5, 8)
ROUNDS = {("cpu", "modular"): 10, ("cpu", "imdb"): 3, ("cuda", "modular"): 20, ("cuda", "imdb"): 20}
BATCH = {"modular": 512, "imdb": 128}
# What the physical floor of a step is computed from (scripts/bench_table.py): the task, not a row's
# implementation. positions: those the loss can depend on (the decoder reads the answer at position 5,
# and causality leaves positions 6+ unread).
SHAPES = {
    "imdb": dict(kind="encoder", batch=128, positions=256, hidden=128, ffn=512, heads=4, layers=1, vocab=30522,
                 classes=2),
    "modular": dict(kind="decoder", batch=512, positions=6, hidden=128, ffn=512, heads=4, layers=1, vocab=117,
                    classes=117),
}


def synthetic_task(dataset: str, n: int, seed: int = 0, vocab: int = 30522) -> TaskData:
    """Random tokens of the IMDB shape (the modular rows use the real data); ``vocab``: a smaller table."""
    assert dataset == "imdb"
    g = torch.Generator().manual_seed(seed)
    L, V = 256, vocab
    x = torch.randint(5, V, (n, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (n,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    x = torch.where(mask, x, torch.zeros_like(x))
    x[:, 0] = 2  # [CLS]
    y = torch.randint(0, 2, (n,), generator=g)
    return TaskData(dataset, "synthetic", x, y, x[:256], y[:256], vocab_size=V, num_classes=2, readout_pos=0,
                    pool_size=n, train_mask=mask, test_mask=mask[:256], pad_id=0)


def _config(dataset: str, device: str, tmp_path=None, **kw) -> Config:
    if dataset == "modular":
        kw.setdefault("frac", 0.3)  # the paper preset's fraction: 2,873 training pairs
    else:
        kw.setdefault("frac", 1.0)
    return resolve(Config(dataset=dataset, batch_size=BATCH[dataset], steps=10 ** 9, device=device, quiet=True,
                          out=None if tmp_path is None else str(tmp_path / "run"), force=True, **kw))


def _task(dataset: str, cfg: Config) -> TaskData:
    return load_task(cfg, log=lambda _: None) if dataset == "modular" else synthetic_task(dataset, 1024)


def _trainer(dataset, device, tmp_path, backend, cuda_graph="off", dtype="fp32", unroll=None, readout=True):
    cfg = _config(dataset, device, tmp_path, backend=backend, cuda_graph=cuda_graph, dtype=dtype)
    run = Run(cfg, log=lambda _: None, task=_task(dataset, cfg))
    run.model.readout_only = readout
    if unroll is not None:
        run.stepper.unroll = unroll
    info = dict(dtype=dtype, unroll=run.stepper.unroll, backend=backend, cuda_graph=run.cfg.cuda_graph)
    return run.advance, info  # advance(limit): the trainer loop's own step (sampler.prepare + step or replay)


def _compiled(dataset, device, tmp_path, mode):
    """torch.compile of the trainer's torch-backend model: batch gather, forward, loss and the metric in one
    compiled function; torch's fused AdamW; the loss and accuracy summed on the device."""
    torch._dynamo.reset()
    cfg = _config(dataset, device, tmp_path, backend="torch")
    run = Run(cfg, log=lambda _: None, task=_task(dataset, cfg))
    task, model, sampler = run.task, run.model, run.sampler
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                            fused=True)

    def loss_and_correct(idx):
        x, y = task.train_x[idx], task.train_y[idx]
        mask = None if task.train_mask is None else task.train_mask[idx]
        logits = model(x, mask)
        return F.cross_entropy(logits.float(), y), (logits.argmax(-1) == y).sum()

    fn = torch.compile(loss_and_correct, mode=mode)
    sums = torch.zeros(2, dtype=torch.float64, device=run.device)
    n = sampler.batch_size

    def step(limit):
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        loss, correct = fn(sampler.next_indices())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums.add_(torch.stack([loss.detach().double() * n, correct.double()]))
        return 1

    return step, dict(dtype="fp32", mode=mode or "default", optimizer="torch AdamW fused")


def _paper_hf(dataset, device, tmp_path):
    """The paper's loop, with transformers' models (its repository trains these classes)."""
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import BertConfig, BertForSequenceClassification, OpenAIGPTConfig, OpenAIGPTLMHeadModel

    torch.manual_seed(0)
    cfg = _config(dataset, "cpu", tmp_path, backend="torch")
    task = _task(dataset, cfg)
    if dataset == "imdb":
        model = BertForSequenceClassification(BertConfig(
            vocab_size=30522, hidden_size=128, num_hidden_layers=1, num_attention_heads=4, intermediate_size=512,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2))
        data = TensorDataset(task.train_x, task.train_mask.long(), task.train_y)

        def forward(batch):
            ids, attention_mask, y = (t.to(device) for t in batch)
            out = model(input_ids=ids, attention_mask=attention_mask, labels=y)
            return out.loss, out.logits, y
    else:
        model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(
            vocab_size=task.vocab_size, n_positions=task.seq_len, n_embd=128, n_layer=1, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        labels = torch.full_like(task.train_x, -100)
        labels[:, -1] = task.train_x[:, -1]  # loss on the answer token only
        data = TensorDataset(task.train_x, labels)

        def forward(batch):
            ids, lab = (t.to(device) for t in batch)
            out = model(input_ids=ids, labels=lab)
            return out.loss, out.logits[:, -2], ids[:, -1]  # accuracy from the logits at position -2

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    batches = itertools.cycle(DataLoader(data, batch_size=BATCH[dataset], shuffle=False))
    log = []

    def step(limit):
        loss, logits, y = forward(next(batches))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # read on the host every step, as the paper's script logs them
            acc = (logits.argmax(-1) == y).float().mean().item()
            norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())).item()
        log.append((loss.item(), acc, norm))
        if len(log) > 1000:
            log.clear()
        return 1

    return step, dict(dtype="fp32", attn_implementation=getattr(model.config, "_attn_implementation", None))


ROWS = {
    # name: (devices, builder). Ordered so that the compile rows, whose warm-up compiles for a minute or
    # more, come last: a time-capped run (scripts/gpu_check.sh) loses them first.
    "trainer-triton-graph": (("cuda",), lambda d, dev, t: _trainer(d, dev, t, "triton", cuda_graph="on")),
    "trainer-triton-graph-pdl": (("cuda",), lambda d, dev, t: _trainer(d, dev, t, "triton", cuda_graph="on")),
    "trainer-triton-graph-k1": (("cuda",), lambda d, dev, t: _trainer(d, dev, t, "triton", cuda_graph="on", unroll=1)),
    "trainer-triton-graph-bf16": (("cuda",), lambda d, dev, t: _trainer(d, dev, t, "triton", cuda_graph="on",
                                                                        dtype="bf16")),
    "trainer-triton": (("cuda",), lambda d, dev, t: _trainer(d, dev, t, "triton")),
    "trainer-torch": (("cpu", "cuda"), lambda d, dev, t: _trainer(d, dev, t, "torch")),
    "trainer-torch-full": (("cpu", "cuda"), lambda d, dev, t: _trainer(d, dev, t, "torch", readout=False)),
    "paper-hf": (("cpu", "cuda"), _paper_hf),
    "compile-default": (("cpu",), lambda d, dev, t: _compiled(d, dev, t, None)),
    "compile-reduce-overhead": (("cuda",), lambda d, dev, t: _compiled(d, dev, t, "reduce-overhead")),
    "compile-max-autotune-no-cudagraphs": (("cuda",), lambda d, dev, t: _compiled(d, dev, t,
                                                                                  "max-autotune-no-cudagraphs")),
}


def _versions() -> dict:
    import triton

    try:
        import transformers
        tf = transformers.__version__
    except ImportError:
        tf = None
    return dict(torch=torch.__version__, triton=triton.__version__, transformers=tf, python=platform.python_version(),
                cuda=torch.version.cuda)


def _trainer_params(dataset: str) -> int:
    """Parameters of the trainer's model at this shape (tied weights once): the optimiser's bytes."""
    from grokfast_train.models import build_model

    cfg = _config(dataset, "cpu", backend="torch")
    model = build_model(cfg, _task(dataset, cfg))
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


_PARAMS: dict[str, int] = {}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("dataset", DATASETS)
def test_train_step(benchmark, dataset, row, device, tmp_path):
    devices, build = ROWS[row]
    if device not in devices:
        pytest.skip(f"{row} runs on {' and '.join(devices)} only")
    pdl = row.endswith("-pdl")
    if pdl and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90 or later")
    previous = set_pdl(pdl)  # the row's kernels launched (and captured) with PDL, or without
    try:
        _measure(benchmark, dataset, row, device, tmp_path, build)
    finally:
        set_pdl(previous)


def _measure(benchmark, dataset, row, device, tmp_path, build):
    torch.manual_seed(0)
    step, info = build(dataset, device, tmp_path)
    per_round = STEPS_PER_ROUND[device]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def one_round():
        done = 0
        while done < per_round:
            done += step(per_round - done)
        sync()

    for _ in range(2 if device == "cuda" else 1):  # warm-up: compilation, capture, autotuning, allocator
        one_round()
    if dataset not in _PARAMS:
        _PARAMS[dataset] = _trainer_params(dataset)
    benchmark.group = f"train step {dataset} on {device}"
    benchmark.extra_info.update(
        row=row, dataset=dataset, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        device_type=device, steps_per_round=per_round, threads=torch.get_num_threads(),
        shape=dict(SHAPES[dataset], params=_PARAMS[dataset]), pdl=pdl_enabled(), **_versions(), **info)
    benchmark.pedantic(one_round, rounds=ROUNDS[(device, dataset)], iterations=1, warmup_rounds=0)
