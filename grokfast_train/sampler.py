"""Batches drawn on the device, with every bit of per-step state in device tensors.

``draw(x, y, mask)`` is the part of a training step that picks the batch and gathers its rows. It
reads a fixed permutation buffer at a device-side offset and advances that offset in place, so it
takes no host arguments and never synchronises: a CUDA graph that captures it draws a new batch at
every replay. On CUDA it is one launch (``kernels.draw_batch``); ``next_indices()`` is the same
draw's indices alone. What needs the host -- drawing an epoch's permutation from the seeded CPU
generator -- happens in ``prepare(step)``, which the loop calls between steps, outside any
captured region, and which copies into the same buffer (its address never changes).

Two orders:

* ``shuffle``: each epoch a fresh seeded permutation of the training subset; the remainder of
  an epoch is dropped, as a DataLoader with ``drop_last`` does.
* ``cyclic``: the paper's order -- an unshuffled DataLoader under ``itertools.cycle`` -- over the
  subset, which is already in its seeded-permutation order (``data/subset.py``). Batches are taken
  from the endless cycle, so one wraps around the end of the subset: every step sees exactly
  ``batch_size`` examples (static shapes), where the paper's last batch of each pass is short.

A subset smaller than the batch is used whole each step (full-batch training).
"""

from __future__ import annotations

import torch

import kernels

ORDERS = ("cyclic", "shuffle")


class EpochSampler:
    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device, order: str = "shuffle"):
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose one of: {', '.join(ORDERS)}")
        self.n = n
        self.order = order
        self.batch_size = min(batch_size, n)
        self.batches_per_epoch = n // self.batch_size
        self.device = device
        # A CPU generator keeps the stream identical across devices and trivially checkpointable.
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.perm = torch.arange(n, device=device)  # cyclic: the identity, for good
        self.offset = torch.zeros((), dtype=torch.long, device=device)  # where the next batch starts
        # draw_batch's per-run arguments, as a pack of one
        self._n, self._batch = (torch.tensor([v], device=device) for v in (n, self.batch_size))
        self._counter = torch.zeros(1, dtype=torch.int32, device=device)  # the kernel's, left at 0
        self._ids = torch.arange(n, device=device)  # next_indices' rows (made here, never inside a capture)

    def prepare(self, step: int) -> None:
        """Host side, before the batch of step ``step + 1`` is drawn: start a shuffled epoch when one is due."""
        if self.order == "shuffle" and step % self.batches_per_epoch == 0:
            perm = torch.randperm(self.n, generator=self.gen)
            if self.device.type == "cuda":
                perm = perm.pin_memory()  # an asynchronous copy needs page-locked memory
            self.perm.copy_(perm, non_blocking=True)
            self.offset.zero_()

    def steps_to_epoch(self, step: int) -> int | None:
        """Steps until the next shuffled epoch starts (host work), or None for the cyclic order."""
        if self.order != "shuffle":
            return None
        return (step // self.batches_per_epoch + 1) * self.batches_per_epoch - step

    def draw(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None):
        """The next batch's rows of the training subset's (x, y, mask), offset advanced (device only)."""
        # perm and offset as views: a pack re-points them into its own (R, n_max) and (R,) buffers
        bx, by, bm = kernels.draw_batch(self.perm.view(1, -1), self.offset.view(1), self._n, self._batch,
                                        self.batch_size, x, y, mask, counter=self._counter)
        return bx[0], by[0], None if bm is None else bm[0]

    def next_indices(self) -> torch.Tensor:
        """The next batch's indices into the training subset: ``draw``'s rows of 0 .. n-1."""
        return self.draw(self._ids[:, None], self._ids)[1]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.cpu(), "offset": int(self.offset), "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        if state.get("order", "shuffle") != self.order:
            raise ValueError(f"sampler order {state.get('order')!r} in the checkpoint, {self.order!r} in this run")
        if "pos" in state:  # a checkpoint from before the offset moved to the device: batches drawn this epoch
            offset = state["pos"] * self.batch_size if state["perm"].numel() else 0
        else:
            offset = state["offset"]
        if state["perm"].numel():
            self.perm.copy_(state["perm"])
        self.offset.fill_(offset % self.n)


class PackSampler:
    """The samplers of R packed runs, drawn by one device-side gather per step.

    Run r keeps an ordinary ``EpochSampler`` (its own subset size, batch, seed and epoch order: what
    its solo run draws), but that sampler's permutation and offset are views into (R, n_max) and (R,)
    buffers, so ``next_indices`` serves every run at once. A run's batch may be smaller than the
    widest (full-batch runs over different subset sizes): its lanes past its batch are padding,
    ``valid`` is False there and the loss and metrics weigh them 0.
    """

    def __init__(self, sizes: list[int], batch_size: int | None, seeds: list[int], device: torch.device,
                 order: str = "shuffle"):
        """``batch_size`` None: each run's whole subset every step (full batch)."""
        self.runs = [EpochSampler(n, n if batch_size is None else batch_size, s, device, order)
                     for n, s in zip(sizes, seeds)]
        self.order = order
        R, n_max = len(sizes), max(sizes)
        self.perm = torch.zeros(R, n_max, dtype=torch.long, device=device)
        self.offset = torch.zeros(R, dtype=torch.long, device=device)
        for r, s in enumerate(self.runs):
            self.perm[r, :s.n].copy_(s.perm)
            s.perm, s.offset = self.perm[r, :s.n], self.offset[r]  # the run's state now lives in the pack's rows
        self.batch = torch.tensor([s.batch_size for s in self.runs], device=device)
        self.n = torch.tensor([s.n for s in self.runs], device=device)
        self.width = max(s.batch_size for s in self.runs)
        self.valid = torch.arange(self.width, device=device) < self.batch[:, None]  # (R, width)
        self._counter = torch.zeros(1, dtype=torch.int32, device=device)
        self._ids = torch.arange(n_max, device=device)  # next_indices' rows

    def prepare(self, step: int) -> None:
        for s in self.runs:
            s.prepare(step)

    def steps_to_epoch(self, step: int) -> int | None:
        """Steps until some run starts a shuffled epoch (host work), or None for the cyclic order."""
        if self.order != "shuffle":
            return None
        return min(s.steps_to_epoch(step) for s in self.runs)

    def draw(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
             base: torch.Tensor | None = None):
        """Every run's next batch, (R, width, ...): run r's rows of (x, y, mask) start at ``base[r]`` (int64 (R,))."""
        return kernels.draw_batch(self.perm, self.offset, self.n, self.batch, self.width, x, y, mask, base,
                                  counter=self._counter)

    def next_indices(self) -> torch.Tensor:
        """(R, width) indices into each run's training subset: ``draw``'s rows of 0 .. n_max-1."""
        return self.draw(self._ids[:, None], self._ids)[1]
