"""Experiment loggers: TensorBoard and Weights & Biases, beside metrics.jsonl.

``--log tensorboard``, ``--log wandb`` or ``--log tensorboard,wandb``. Each logger gets the
configuration as hyperparameters at the start, every evaluation row as scalars, and the summary
at the end. metrics.jsonl stays the source of truth; a logger only mirrors it. A resumed run
continues its logger: TensorBoard purges the events a crashed session wrote after its last
checkpoint; W&B resumes the same run id (it cannot rewind, so after a crash it may keep a few
rows past the checkpoint, and ignores the repeated steps). Both are optional extras: ``pip install 'grokfast-train[tensorboard]'`` / ``[wandb]``.

W&B runs offline (files under the run directory, ``wandb sync`` uploads them later) unless the
user is logged in (``WANDB_API_KEY`` or a netrc entry) or sets ``WANDB_MODE`` themselves.
"""

from __future__ import annotations

import dataclasses
import json
import netrc
import os
import uuid
from pathlib import Path

from .errors import UsageError

LOGGERS = ("tensorboard", "wandb")
SCALARS = ("train_acc", "train_loss", "test_acc", "test_loss", "weight_norm")


def parse(spec: str | None) -> list[str]:
    """``"tensorboard,wandb"`` -> ["tensorboard", "wandb"]; raises UsageError on an unknown name."""
    if not spec:
        return []
    names = [s.strip() for s in spec.split(",")]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown or len(set(names)) != len(names):
        raise UsageError(f"--log takes a comma-separated subset of {', '.join(LOGGERS)}, got {spec!r}")
    return names


def _hparams(cfg) -> dict:
    """The configuration as flat scalar hyperparameters (TensorBoard takes only numbers, strings, bools)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        if isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        out[k] = "none" if v is None else v
    return out


class TensorBoardLogger:
    def __init__(self, run_dir: Path, cfg, start_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--log tensorboard needs TensorBoard: pip install 'grokfast-train[tensorboard]'") from None
        # purge_step: a resumed session drops what a crashed one logged after the checkpoint's step
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.hparams = _hparams(cfg)
        if not start_step:
            self.writer.add_text("config", "```\n" + json.dumps(self.hparams, indent=2) + "\n```", 0)

    def log_eval(self, row: dict) -> None:
        for k in SCALARS:
            self.writer.add_scalar(k, row[k], row["step"])

    def finish(self, summary: dict) -> None:
        numbers = {f"summary/{k}": float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.writer.add_hparams(self.hparams, numbers, run_name="hparams")  # its own file: steps stay in order
        self.close()

    def close(self) -> None:
        self.writer.close()


def _logged_in_to_wandb() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    ID_FILE = "wandb_id"

    def __init__(self, run_dir: Path, cfg, start_step: int):
        try:
            import wandb
        except ImportError:
            raise UsageError("--log wandb needs Weights & Biases: pip install 'grokfast-train[wandb]'") from None
        id_file = run_dir / self.ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        mode = os.environ.get("WANDB_MODE") or ("online" if _logged_in_to_wandb() else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "grokfast-train"), name=run_dir.name,
                              id=run_id, resume="allow", dir=str(run_dir), mode=mode, config=_hparams(cfg),
                              settings=wandb.Settings(silent=True, console="off"))

    def log_eval(self, row: dict) -> None:
        self.run.log({k: row[k] for k in SCALARS}, step=row["step"])

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})
        self.close()

    def close(self) -> None:
        self.run.finish()


def open_loggers(spec: str | None, run_dir: Path, cfg, start_step: int) -> list:
    kinds = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}
    return [kinds[name](run_dir, cfg, start_step) for name in parse(spec)]
