"""Datasets: modular arithmetic and sentiment reviews, as ``TaskData`` tensors.

``load_task(cfg)`` takes a resolved ``Config`` and returns the training subset and the full
test set. Modules: ``modular`` (the arithmetic task), ``text`` (review sources),
``tokenizer`` (WordPiece), ``cache`` (on-disk cache), ``subset`` (nested subsets),
``sentiment`` (the text pipeline), ``task`` (the ``TaskData`` container).
"""

from __future__ import annotations

from typing import Callable

from ..config import Config
from ..errors import UsageError
from .subset import subset_indices
from .task import TaskData

__all__ = ["TaskData", "load_task", "subset_indices"]


def load_task(cfg: Config, log: Callable[[str], None] = print) -> TaskData:
    """The data of one run; progress lines go to ``log``. Raises UsageError / RunError on bad input."""
    if cfg.dataset == "modular":
        from .modular import load_modular

        return load_modular(cfg, log)
    if cfg.dataset in ("imdb", "yelp"):
        from .sentiment import load_sentiment

        return load_sentiment(cfg, log)
    raise UsageError(f"unknown dataset {cfg.dataset!r}; choose one of: modular, imdb, yelp")
