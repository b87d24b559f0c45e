"""What a run measures: accumulated train metrics, evaluation, weight norm, and the summary."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .models import ops


class IntervalMeter:
    """Train loss and accuracy summed on the device over an eval interval; read only at eval points.

    Every sum, the example count included, is a device tensor updated in place by the loss itself
    (``loss``), with no host state: a captured step counts correctly on every replay.
    """

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct count, examples
        self.counter = torch.zeros(1, dtype=torch.int32, device=device)  # the fused loss's scratch, left zero

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, backend: str = "torch") -> torch.Tensor:
        """The batch-mean cross-entropy to backpropagate; the same call adds the batch's loss sum, correct
        count and size to the interval's sums (on the triton backend, inside the loss's own fused kernel)."""
        return ops.cross_entropy(logits, labels, sums=self.sums, backend=backend, counter=self.counter)

    def read_and_reset(self) -> tuple[float, float]:
        """Mean loss and accuracy since the last read; the one host sync of an interval."""
        loss_sum, correct, count = self.sums.tolist()
        count = max(count, 1.0)
        self.sums.zero_()
        return loss_sum / count, correct / count

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu()}

    def load_state_dict(self, state: dict) -> None:
        sums = state["sums"]
        if "count" in state:  # a checkpoint from before the count moved to the device
            sums = torch.cat([sums, sums.new_tensor([float(state["count"])])])
        self.sums.copy_(sums)


@torch.no_grad()
def evaluate_sums(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                  batch_size: int, autocast=contextlib.nullcontext) -> torch.Tensor:
    """(sum of cross-entropies, number correct) over the whole of (x, y), in batches, as a float64
    device tensor: queued, not read (no host sync). ``autocast``: a context factory for the forward
    (``precision.autocast``). Each example's loss is summed in fp64, the same arithmetic as the
    captured evaluation (``graph.GraphEval``)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        mb = None if mask is None else mask[i:i + batch_size]
        with autocast():
            logits = model(xb, mb)
        losses = F.cross_entropy(logits.float(), yb, reduction="none")
        totals += torch.stack([losses.double().sum(), (logits.argmax(-1) == yb).sum().double()])
    model.train(was_training)
    return totals


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
             batch_size: int, autocast=contextlib.nullcontext) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole of (x, y), in batches."""
    loss_sum, correct = evaluate_sums(model, x, y, mask, batch_size, autocast).tolist()
    return loss_sum / x.shape[0], correct / x.shape[0]


@torch.no_grad()
def weight_norm_tensor(params) -> torch.Tensor:
    """L2 norm of all weights together (tied weights counted once), as a 0-dim fp32 device tensor."""
    unique = list({id(p): p for p in params}.values())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.float()) for p in unique]))


def weight_norm(params) -> float:
    """L2 norm of all weights together (tied weights counted once)."""
    return weight_norm_tensor(params).item()


def first_step(history: list[dict], key: str, threshold: float) -> int | None:
    for row in history:
        if row[key] >= threshold:
            return row["step"]
    return None


def generalised_for(after: int | None, step: int, generalization_step: int | None) -> bool:
    """--stop-after-generalising: at ``step``, has the run been generalised for ``after`` steps or more?"""
    return after is not None and generalization_step is not None and step - generalization_step >= after


def landmarks_text(summary: dict) -> str:
    """'memorised at step 400, generalised at step 3,200 (delay 2,800)', or 'never ...' for either; and
    where an early stop (--stop-after-generalising) ended the run."""
    mem, gen, delay = summary["memorization_step"], summary["generalization_step"], summary["grokking_delay"]
    parts = ["never memorised" if mem is None else f"memorised at step {mem:,}",
             "never generalised" if gen is None else f"generalised at step {gen:,}"]
    stopped = summary.get("stopped_early_at")
    return (", ".join(parts) + ("" if delay is None else f" (delay {delay:,})")
            + ("" if stopped is None else f"; stopped at step {stopped:,} (--stop-after-generalising)"))


def summarize(history: list[dict], mem_threshold: float, gen_threshold: float,
              steps_per_s: float) -> dict:
    """The grokking landmarks of a run, from its eval history."""
    mem = first_step(history, "train_acc", mem_threshold)
    gen = first_step(history, "test_acc", gen_threshold)
    return {
        "memorization_step": mem,
        "generalization_step": gen,
        "grokking_delay": (gen - mem) if mem is not None and gen is not None else None,
        "memorization_threshold": mem_threshold,
        "generalization_threshold": gen_threshold,
        "best_test_acc": max((r["test_acc"] for r in history), default=None),
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "final_train_acc": history[-1]["train_acc"] if history else None,
        "final_step": history[-1]["step"] if history else 0,
        "steps_per_s": steps_per_s,
    }

