"""Batches drawn on the device: each epoch a fresh seeded permutation of the training subset.

The permutation lives on the device and the position in it on the host, so drawing a batch
never synchronises. Every batch has the same size (the remainder of an epoch is dropped, as a
DataLoader with drop_last does); a subset smaller than the batch is used whole each step.
"""

from __future__ import annotations

import torch


class EpochSampler:
    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n = n
        self.batch_size = min(batch_size, n)
        self.batches_per_epoch = n // self.batch_size
        self.device = device
        # A CPU generator keeps the stream identical across devices and trivially checkpointable.
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long, device=device)
        self.pos = self.batches_per_epoch  # forces a fresh permutation on the first draw

    def next_indices(self) -> torch.Tensor:
        if self.pos == self.batches_per_epoch:
            perm = torch.randperm(self.n, generator=self.gen)
            if self.device.type == "cuda":
                perm = perm.pin_memory()  # an asynchronous copy needs page-locked memory
            self.perm = perm.to(self.device, non_blocking=True)
            self.pos = 0
        start = self.pos * self.batch_size
        self.pos += 1
        return self.perm[start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.cpu(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm = state["perm"].to(self.device)
        self.pos = state["pos"]
