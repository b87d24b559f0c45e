"""The tensors a run trains and evaluates on, whatever the dataset."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class TaskData:
    """A training subset and the full test set, as integer tensors ready to move to a device.

    Every example is one token sequence whose label the model reads at ``readout_pos``:
    position 0 (the [CLS] token) for the encoder classifier, the position of ``=`` for the
    modular-arithmetic decoder.
    """

    name: str  # "modular" | "imdb" | "yelp"
    source: str  # one line saying exactly where the data came from (printed and saved)
    train_x: torch.Tensor  # (N, L) int64 token ids
    train_y: torch.Tensor  # (N,) int64 labels: class index, or the answer token id for modular
    test_x: torch.Tensor
    test_y: torch.Tensor
    vocab_size: int
    num_classes: int  # output width of the head: 2 for sentiment, vocab_size for modular
    readout_pos: int
    pool_size: int  # size of the training pool the subset was drawn from
    train_mask: torch.Tensor | None = None  # (N, L) bool, True at real tokens (None: no padding)
    test_mask: torch.Tensor | None = None
    pad_id: int | None = None

    @property
    def seq_len(self) -> int:
        return self.train_x.shape[1]

    def to(self, device: torch.device | str) -> "TaskData":
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device)
        return TaskData(**moved)
