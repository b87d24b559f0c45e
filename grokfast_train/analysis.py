"""The paper's analysis of grokking runs, as pure functions on arrays (no files, no plotting).

* smoothing: a Gaussian filter over test accuracy with sigma in *steps* (the paper:
  ``scipy.ndimage.gaussian_filter(acc, sigma=100)`` over per-step accuracy; our curves are sampled
  every ``eval_every`` steps, so the filter runs with sigma / eval_every samples);
* steps-to-threshold: the first step at which the smoothed curve reaches 0.1 ... 0.9, and the
  "highest point" per run (the most steps any reached threshold took);
* landmarks and regimes of one run (insufficiency / sufficiency / surplus, ``RegimeRule``);
* the critical data size of one model size over data sizes x seeds (``critical_data_size``).

"Never" is ``None`` everywhere; the paper writes 0 for a threshold never reached, which would
make a run that never generalises look like one that generalised at once.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from typing import Iterable

import numpy as np
from scipy.ndimage import gaussian_filter1d

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_SIGMA_STEPS = 100.0
PAPER_WINDOW_STEPS = 6_000

INSUFFICIENCY, SUFFICIENCY, SURPLUS = "insufficiency", "sufficiency", "surplus"


# -- curves --------------------------------------------------------------------------------------
def within(steps: np.ndarray, window: int | None) -> np.ndarray:
    """Mask of the evaluations inside the analysis window (all of them when window is None)."""
    steps = np.asarray(steps)
    return np.ones(steps.shape, bool) if window is None else steps <= window


def smooth(steps: np.ndarray, values: np.ndarray, sigma_steps: float) -> np.ndarray:
    """Gaussian-smoothed ``values`` with sigma in steps, scipy's default 'reflect' edges (the paper's).

    Evaluations are normally evenly spaced; when they are not (an extended run that ended off the
    eval grid), the curve is interpolated onto an even grid at the smallest spacing, filtered there
    and read back at the original steps.
    """
    steps = np.asarray(steps, dtype=float)
    values = np.asarray(values, dtype=float)
    if sigma_steps <= 0 or len(values) < 2:
        return values.copy()
    gaps = np.diff(steps)
    spacing = gaps.min()
    if np.allclose(gaps, spacing):
        return gaussian_filter1d(values, sigma_steps / spacing, mode="reflect")
    grid = np.arange(steps[0], steps[-1] + spacing / 2, spacing)
    smoothed = gaussian_filter1d(np.interp(grid, steps, values), sigma_steps / spacing, mode="reflect")
    return np.interp(steps, grid, smoothed)


def first_step(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """The first step whose value is >= threshold; None when it never is."""
    hits = np.flatnonzero(np.asarray(values) >= threshold)
    return int(np.asarray(steps)[hits[0]]) if hits.size else None


def steps_to_thresholds(steps: np.ndarray, smoothed: np.ndarray,
                        thresholds: Iterable[float] = THRESHOLDS) -> dict[float, int | None]:
    return {t: first_step(steps, smoothed, t) for t in thresholds}


def highest_point(to_threshold: dict[float, int | None]) -> int | None:
    """The paper's "highest point" of a run: the most steps any threshold it reached took."""
    reached = [s for s in to_threshold.values() if s is not None]
    return max(reached) if reached else None


# -- one run --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Landmarks:
    memorization_step: int | None
    generalization_step: int | None

    @property
    def delay(self) -> int | None:
        if self.memorization_step is None or self.generalization_step is None:
            return None
        return self.generalization_step - self.memorization_step


def landmarks(steps, train_acc, test_acc, mem_threshold: float, gen_threshold: float) -> Landmarks:
    """First evaluation with train acc >= mem_threshold / test acc >= gen_threshold (raw, as summary.json)."""
    return Landmarks(first_step(steps, train_acc, mem_threshold), first_step(steps, test_acc, gen_threshold))


@dataclasses.dataclass(frozen=True)
class RegimeRule:
    """Surplus when generalisation lags memorisation by at most max(delay_factor x the memorisation
    step, floor_evals evaluation intervals); the floor absorbs the eval grid's quantisation."""

    delay_factor: float = 1.0
    floor_evals: int = 2

    def tolerance(self, memorization_step: int, eval_every: int) -> float:
        return max(self.delay_factor * memorization_step, self.floor_evals * eval_every)

    def describe(self) -> str:
        return (f"insufficiency: never generalises within the budget; surplus: generalises at most "
                f"max({self.delay_factor:g} x memorisation step, {self.floor_evals} eval intervals) steps "
                f"after memorising (or without ever memorising); sufficiency: generalises later than that")


def classify(marks: Landmarks, eval_every: int, rule: RegimeRule = RegimeRule()) -> str:
    if marks.generalization_step is None:
        return INSUFFICIENCY
    if marks.memorization_step is None:  # generalised without memorising: no lag behind memorisation
        return SURPLUS
    return SURPLUS if marks.delay <= rule.tolerance(marks.memorization_step, eval_every) else SUFFICIENCY


# -- a sweep: data sizes x seeds of one model ------------------------------------------------------
def peak_size(mean_by_size: dict[int, float | None]) -> int | None:
    """The data size with the largest value (the smallest such size on a tie); None if no values."""
    present = {s: v for s, v in mean_by_size.items() if v is not None}
    if not present:
        return None
    top = max(present.values())
    return min(s for s, v in present.items() if v == top)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def threshold_peaks(to_threshold: dict[int, list[dict[float, int | None]]],
                    thresholds: Iterable[float] = THRESHOLDS) -> dict[float, int | None]:
    """Per threshold, the data size where the steps to reach it (mean over the seeds that did) peak.

    ``to_threshold`` maps data size -> one steps-to-threshold dict per seed.
    """
    return {t: peak_size({size: mean_or_none(run[t] for run in runs) for size, runs in to_threshold.items()})
            for t in thresholds}


CDS_RULE = ("per seed, the smallest data size at which that seed generalises within the budget and "
            "keeps generalising at every larger size of the grid; estimate = median over seeds (a seed that "
            "does not generalise at the largest size counts as above the grid), low/high = min/max over "
            "seeds, so high is the smallest size from which every seed generalises")
PEAK_RULE = ("the data size where the generalisation step, averaged over seeds, is largest, among "
             "the sizes that every seed of the model ran and generalised at (a mean that left out seeds "
             "which never generalised, or were never run, is not comparable with the others)")


def sizes_every_seed_ran(size_seed: Iterable[tuple[int, int]]) -> set[int]:
    """The data sizes run with every seed that any size was run with: where means over seeds compare
    (PEAK_RULE)."""
    seeds_at: dict[int, set[int]] = defaultdict(set)
    for size, seed in size_seed:
        seeds_at[size].add(seed)
    every = set().union(*seeds_at.values()) if seeds_at else set()
    return {size for size, seeds in seeds_at.items() if seeds == every}


def seed_critical_size(generalised: dict[int, bool]) -> tuple[int | None, str]:
    """One seed's critical size over its data sizes, and a note when it is censored or non-monotone."""
    sizes = sorted(generalised)
    if not sizes or not generalised[sizes[-1]]:
        return None, "does not generalise at the largest size: above the grid"
    first = len(sizes)
    while first > 0 and generalised[sizes[first - 1]]:
        first -= 1
    notes = []
    if first == 0:
        notes.append("generalises at the smallest size: at or below the grid")
    if any(generalised[s] for s in sizes[:first]):
        notes.append("non-monotone: also generalises at a smaller size, " +
                     ", ".join(str(s) for s in sizes[:first] if generalised[s]))
    return sizes[first], "; ".join(notes)


def _median(values: list[float]) -> float | None:
    m = statistics.median(values)
    if math.isinf(m):
        return None
    return int(m) if float(m).is_integer() else float(m)


def critical_data_size(records: Iterable[tuple[int, int, int | None]]) -> dict:
    """The critical data size of one model size from (train_size, seed, generalization_step or None).

    A run generalised when its generalization_step is not None (the caller applies the budget).
    Returns the estimate with its low/high over seeds, each seed's value and note, the per-size
    counts and mean steps, and the size where steps-to-generalise peaks; rules in CDS_RULE, PEAK_RULE.
    """
    by_seed: dict[int, dict[int, bool]] = defaultdict(dict)
    by_size: dict[int, list[int | None]] = defaultdict(list)
    for size, seed, gen_step in records:
        by_seed[seed][size] = gen_step is not None
        by_size[size].append(gen_step)
    comparable = sizes_every_seed_ran((size, seed) for seed, sizes in by_seed.items() for size in sizes)

    per_seed = []
    for seed in sorted(by_seed):
        size, note = seed_critical_size(by_seed[seed])
        per_seed.append({"seed": seed, "critical_size": size, "note": note})
    values = [math.inf if s["critical_size"] is None else s["critical_size"] for s in per_seed]

    per_size = []
    for size in sorted(by_size):
        steps = by_size[size]
        done = [s for s in steps if s is not None]
        per_size.append({"train_size": size, "seeds": len(steps), "generalised": len(done),
                         "mean_generalization_step": float(np.mean(done)) if done else None})
    all_generalised = {p["train_size"]: p["mean_generalization_step"] for p in per_size
                       if p["generalised"] == p["seeds"] and p["train_size"] in comparable}
    peak = peak_size(all_generalised)
    high = max(values) if values else math.inf
    return {
        "rule": CDS_RULE,
        "estimate": _median(values) if values else None,
        "low": min(values) if values and not math.isinf(min(values)) else None,
        "high": None if math.isinf(high) else high,
        "seeds": len(per_seed),
        "seeds_disagree": len(set(values)) > 1,
        "per_seed": per_seed,
        "peak_size": peak,
        "peak_mean_generalization_step": all_generalised.get(peak),
        "peak_rule": PEAK_RULE,
        "per_size": per_size,
    }
