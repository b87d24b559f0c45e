"""The host side of training, shared by a solo run (train.Run) and a pack (pack.PackedRun).

Between host points the loop only launches steps, or replays them from a CUDA graph; it acts on the
host -- and waits for the device -- only at: an eval point (every ``eval_every`` steps, and the last
step; checkpoints fall on eval points), the end, and, in the shuffled order, the start of an epoch
(its permutation is drawn on the host). A Ctrl-C is acted on at the next host point: the state is
checkpointed and the loop returns, so a resumed run continues the same trajectory.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

from .interrupt import StopFlag


def steps_to_host_work(run) -> int:
    """Steps from ``run.step`` to the next host point; no replay crosses one."""
    cfg, step = run.cfg, run.step
    stop = min(cfg.steps, (step // cfg.eval_every + 1) * cfg.eval_every) - step
    epoch = run.sampler.steps_to_epoch(step)
    return stop if epoch is None else min(stop, epoch)


def drive(run, reporter, record: Callable[[float], Callable[[], None] | None], save: Callable[[float], None],
          check_finite: Callable[[], None], live: Callable[[], bool] = lambda: True) -> tuple[bool, float]:
    """Advance ``run`` (its cfg, step, sampler and ``advance(limit)``) to ``cfg.steps``.

    ``record(now)`` at each eval point, ``save(now)`` at each checkpoint point and on a Ctrl-C --
    after ``check_finite()`` when the Ctrl-C fell between eval points, so that a state that went
    non-finite since the last evaluation is never checkpointed; ``now`` is seconds since this call.
    Stops early, with a checkpoint, once ``live()`` is false (a run that has been generalised for
    --stop-after-generalising steps; a pack none of whose runs still trains).
    Returns (stopped by Ctrl-C, wall seconds).

    ``record`` reads the evaluation and decides (non-finite, early stop); it may return the evaluation's
    output -- metrics files, loggers, lines -- as a callable, which is called once the next steps are
    queued: on a GPU the device trains on while the host writes, instead of idling after the read. It is
    called before any checkpoint (which never holds an evaluation the metrics file lacks), so before
    this function returns, and when it raises.
    """
    cfg, start, t0 = run.cfg, run.step, time.perf_counter()
    pending: list[Callable[[], None]] = []

    def now() -> float:
        return time.perf_counter() - t0

    def publish() -> None:
        while pending:
            pending.pop()()

    try:
        with StopFlag() as stop:
            while run.step < cfg.steps and live():
                run.advance(steps_to_host_work(run))
                publish()  # the last evaluation's output, now that the device has these steps
                reporter.step(run.step, (run.step - start) / max(now(), 1e-9))
                at_eval = run.step % cfg.eval_every == 0 or run.step == cfg.steps
                if at_eval and (output := record(now())) is not None:
                    pending.append(output)
                if run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps or stop.set or not live():
                    if stop.set and not at_eval:
                        check_finite()
                    publish()
                    save(now())
                if stop.set and run.step < cfg.steps and live():  # (a Ctrl-C at the end or at a stop: finished)
                    return True, now()
        return False, now()
    except BaseException:  # (every other way out passes a checkpoint, which writes the output first)
        with contextlib.suppress(Exception):  # write what can be written; the error in flight is the one to report
            publish()
        raise
