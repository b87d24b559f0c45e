"""Modular arithmetic ``c = (a op b) mod p`` in the token format of the paper's GPT setup.

Token ids (vocabulary ``p + 3``):

* ``0 .. p-1`` — the numbers themselves;
* ``p``        — the operator (one token; the operation is fixed per run);
* ``p + 1``    — ``=``;
* ``p + 2``    — end of sequence (reserved so that the vocabulary matches the paper; unused).

Every example is the input ``[a, op, b, =]`` (length 4); its label is the token ``c``, which
the decoder predicts at position 3 (the ``=``) over the whole vocabulary, so
``num_classes = vocab_size = p + 3``. There is no padding.

All pairs are enumerated (``p²`` of them; ``p² − p`` for ``div``, which needs ``b ≠ 0`` and
reads ``c = a · b⁻¹ mod p``) and split 75/25 once by a permutation seeded by ``split_seed``
alone, so the test set is the same in every run of a sweep. The 75 % is the training pool
from which ``--frac`` / ``--train-size`` take their nested subsets.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..config import Config
from .subset import subset_indices
from .task import TaskData

TRAIN_SHARE = (3, 4)  # the paper's fixed 75/25 split


def token_ids(p: int) -> dict[str, int]:
    return {"op": p, "eq": p + 1, "eos": p + 2}


def all_examples(p: int, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``[a, op, b, =]`` sequence (int64, shape (n, 4)) and its answer ``c`` (int64, (n,))."""
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
    ids = token_ids(p)
    x = torch.stack([a, torch.full_like(a, ids["op"]), b, torch.full_like(a, ids["eq"])], dim=1)
    return x, c


def split(n: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training pool (75 %) and the test set (25 %), fixed by ``split_seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_pool = n * TRAIN_SHARE[0] // TRAIN_SHARE[1]
    return perm[:n_pool], perm[n_pool:]


def load_modular(cfg: Config, log: Callable[[str], None] = print) -> TaskData:
    x, y = all_examples(cfg.p, cfg.op)
    pool, test = split(len(x), cfg.split_seed)
    chosen = pool[subset_indices(len(pool), cfg.frac, cfg.train_size, cfg.seed)]
    source = (f"modular arithmetic (a {cfg.op} b) mod {cfg.p}: {len(x):,} pairs, fixed 75/25 split "
              f"(split seed {cfg.split_seed}): pool {len(pool):,} / test {len(test):,}")
    log(f"{source}; training on {len(chosen):,} pairs")
    return TaskData(name="modular", source=source, train_x=x[chosen], train_y=y[chosen],
                    test_x=x[test], test_y=y[test], vocab_size=cfg.p + 3, num_classes=cfg.p + 3,
                    readout_pos=3, pool_size=len(pool))
