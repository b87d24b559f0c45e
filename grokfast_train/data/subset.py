"""Training subsets that nest: the subset at any size is a prefix of one fixed permutation.

A sweep over data fractions must differ only in how much data each run sees, not in which
examples: with one permutation per seed, the 10 % subset lies inside the 20 % subset, and so
on. The test set is never touched here, so it cannot depend on the fraction or the seed.
"""

from __future__ import annotations

import torch

from ..errors import UsageError


def subset_size(pool_size: int, frac: float | None, train_size: int | None) -> int:
    """How many pool examples a run trains on: ``train_size``, or ``round(frac * pool)`` (at least 1)."""
    if train_size is not None:
        if train_size > pool_size:
            raise UsageError(f"--train-size {train_size:,} exceeds the training pool of {pool_size:,} examples; "
                             f"pass at most {pool_size:,} (or --frac F)")
        return train_size
    if frac is None:
        raise UsageError("give --frac F or --train-size N")
    return min(pool_size, max(1, round(frac * pool_size)))


def subset_indices(pool_size: int, frac: float | None, train_size: int | None, seed: int) -> torch.Tensor:
    """Indices into the training pool (int64): the prefix of the permutation seeded by ``seed``."""
    if pool_size < 1:
        raise UsageError("the training pool is empty")
    k = subset_size(pool_size, frac, train_size)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(pool_size, generator=gen)[:k]
