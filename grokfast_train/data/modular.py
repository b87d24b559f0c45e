"""Modular arithmetic ``c = (a op b) mod p``, in the paper's token format or a compact one.

``paper`` (the default; the paper's GPT setup tokenises ``"{a} + {b} % {p} = {c}"`` split on
spaces): the numbers ``0 .. p`` are ids ``0 .. p`` (``p`` itself appears as the modulus), then
the operator (``+``, ``-``, ``*`` or ``/``: one token, fixed per run) is ``p + 1``, ``=`` is
``p + 2`` and ``%`` is ``p + 3``, so the vocabulary is ``p + 4`` (117 at p = 113). Every example
is the 7-token sequence ``[a, op, b, %, p, =, c]``; the loss reads the logits at the ``=``
(position 5), whose next token is the answer ``c``. Causality keeps ``c`` from reaching them.

``compact`` (``--modular-format compact``): ``[a, op, b, =]`` with ids ``0 .. p-1`` for numbers,
``p`` the operator, ``p + 1`` ``=``, ``p + 2`` a reserved end token (vocabulary ``p + 3``); the
answer is read at position 3.

Either way the label is the answer token ``c`` and the decoder predicts it over the whole
vocabulary (``num_classes = vocab_size``). All pairs are enumerated (``p²``; ``p² − p`` for
``div``, which needs ``b ≠ 0`` and reads ``c = a · b⁻¹ mod p``) and split 75/25 once by a
permutation seeded by ``split_seed`` alone, so the test set is the same in every run of a
sweep. The 75 % is the training pool from which ``--frac`` / ``--train-size`` take their nested
subsets.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..config import Config
from .subset import subset_indices
from .task import TaskData

TRAIN_SHARE = (3, 4)  # the paper's fixed 75/25 split


SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def token_ids(p: int, fmt: str = "paper") -> dict[str, int]:
    if fmt == "paper":
        return {"op": p + 1, "eq": p + 2, "mod": p + 3}
    return {"op": p, "eq": p + 1, "eos": p + 2}


def vocab_size(p: int, fmt: str = "paper") -> int:
    return p + 4 if fmt == "paper" else p + 3


def readout_pos(fmt: str = "paper") -> int:
    """The position of ``=``, whose logits predict the answer."""
    return 5 if fmt == "paper" else 3


def all_examples(p: int, op: str, fmt: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """Every sequence (int64, (n, 7) or (n, 4) by format) and its answer ``c`` (int64, (n,))."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    if op == "add":
        c = (a + b) % p
    elif op == "sub":
        c = (a - b) % p
    elif op == "mul":
        c = (a * b) % p
    elif op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([0] + [pow(v, -1, p) for v in range(1, p)])  # needs p prime (config checks)
        c = (a * inverse[b]) % p
    else:
        raise ValueError(f"unknown modular op {op!r}")
    ids = token_ids(p, fmt)

    def const(v):
        return torch.full_like(a, v)

    if fmt == "paper":
        x = torch.stack([a, const(ids["op"]), b, const(ids["mod"]), const(p), const(ids["eq"]), c], dim=1)
    else:
        x = torch.stack([a, const(ids["op"]), b, const(ids["eq"])], dim=1)
    return x, c


def pool_size(p: int, op: str) -> int:
    """Size of the training pool, known without building the data (a sweep checks its grid with it)."""
    n = p * p - (p if op == "div" else 0)
    return n * TRAIN_SHARE[0] // TRAIN_SHARE[1]


def test_size(p: int, op: str) -> int:
    """Size of the test set (the pairs outside the training pool)."""
    return p * p - (p if op == "div" else 0) - pool_size(p, op)


def split(n: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training pool (75 %) and the test set (25 %), fixed by ``split_seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_pool = n * TRAIN_SHARE[0] // TRAIN_SHARE[1]
    return perm[:n_pool], perm[n_pool:]


def load_modular(cfg: Config, log: Callable[[str], None] = print) -> TaskData:
    fmt = cfg.modular_format
    x, y = all_examples(cfg.p, cfg.op, fmt)
    pool, test = split(len(x), cfg.split_seed)
    chosen = pool[subset_indices(len(pool), cfg.frac, cfg.train_size, cfg.seed)]
    shape = f"'a {SYMBOLS[cfg.op]} b % {cfg.p} = c'" if fmt == "paper" else f"compact [a, {SYMBOLS[cfg.op]}, b, =]"
    source = (f"modular arithmetic (a {cfg.op} b) mod {cfg.p} as {shape}: {len(x):,} pairs, fixed 75/25 split "
              f"(split seed {cfg.split_seed}): pool {len(pool):,} / test {len(test):,}")
    log(f"{source}; training on {len(chosen):,} pairs")
    return TaskData(name="modular", source=source, train_x=x[chosen], train_y=y[chosen],
                    test_x=x[test], test_y=y[test], vocab_size=vocab_size(cfg.p, fmt),
                    num_classes=vocab_size(cfg.p, fmt), readout_pos=readout_pos(fmt), pool_size=len(pool))
