"""The report's analysis on synthetic curves whose answers are known by construction or by hand."""

import math

import numpy as np
import pytest

from grokfast_train import analysis as an


def reference_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """An independent Gaussian filter: normalised kernel truncated at 4 sigma, half-sample symmetric edges."""
    radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(values, radius, mode="symmetric")  # d c b a | a b c d | d c b a
    return np.convolve(padded, kernel, mode="valid")


@pytest.mark.parametrize("eval_every,sigma_steps", [(10, 100), (100, 100), (7, 50)])
def test_smooth_matches_an_independent_filter_with_sigma_in_steps(eval_every, sigma_steps):
    rng = np.random.default_rng(0)
    steps = eval_every * np.arange(1, 301)
    values = rng.random(300)
    got = an.smooth(steps, values, sigma_steps)
    np.testing.assert_allclose(got, reference_smooth(values, sigma_steps / eval_every), rtol=0, atol=1e-12)


def test_smooth_sigma_is_in_steps_whatever_the_eval_interval():
    """The same curve sampled every 10 or every 20 steps smooths to the same values at shared steps."""
    def curve(steps):
        return 1 / (1 + np.exp(-(steps - 1500) / 40))

    fine, coarse = np.arange(10, 3001, 10), np.arange(20, 3001, 20)
    a = an.smooth(fine, curve(fine), 100)
    b = an.smooth(coarse, curve(coarse), 100)
    interior = (coarse > 500) & (coarse < 2500)  # away from the reflected edges
    np.testing.assert_allclose(a[1::2][interior], b[interior], atol=2e-3)
    assert abs(a[1::2][interior] - curve(coarse[interior])).max() > 0.02  # it did smooth


def test_smooth_identities():
    steps = np.arange(10, 1001, 10)
    np.testing.assert_allclose(an.smooth(steps, np.full(100, 0.42), 100), 0.42)
    ramp = np.linspace(0, 1, 100)
    np.testing.assert_array_equal(an.smooth(steps, ramp, 0), ramp)


def test_smooth_on_an_uneven_grid_filters_the_interpolated_curve():
    # An extended run: every 10 steps to 95 (its last eval), then 105, 115, ... off the grid.
    steps = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 95, *range(105, 400, 10)])
    values = np.sin(steps / 40.0)
    grid = np.arange(10, 396, 5)
    expected = np.interp(steps, grid, reference_smooth(np.interp(grid, steps, values), 30 / 5))
    np.testing.assert_allclose(an.smooth(steps, values, 30), expected, atol=1e-12)


def test_first_step_counts_a_value_exactly_at_the_threshold():
    steps = np.arange(100, 1001, 100)
    acc = steps / 1000  # 0.1, 0.2, ..., 1.0: each threshold is met exactly at one evaluation
    got = an.steps_to_thresholds(steps, acc)
    assert got == {t: round(t * 1000) for t in an.THRESHOLDS}
    assert an.first_step(steps, acc, np.nextafter(0.3, 1)) == 400  # just above 0.3: the next one
    assert an.first_step(steps, acc, 1.01) is None


def test_steps_to_threshold_on_a_smoothed_jump():
    """A jump 0 -> 1 at step 3,000: a symmetric filter puts 0.5 at the jump, 0.1 about 1.28 sigma before it."""
    steps = np.arange(10, 6001, 10)
    acc = (steps >= 3000).astype(float)
    got = an.steps_to_thresholds(steps, an.smooth(steps, acc, 100))
    assert got[0.5] == 3000
    assert 3000 - 140 <= got[0.1] <= 3000 - 120 and 3000 + 120 <= got[0.9] <= 3000 + 140
    assert list(got.values()) == sorted(got.values())


def test_window_cuts_the_curve():
    steps = np.arange(10, 101, 10)
    assert an.within(steps, 50).sum() == 5 and an.within(steps, None).all()


def test_highest_point_ignores_thresholds_never_reached():
    assert an.highest_point({0.1: 100, 0.5: 900, 0.9: None}) == 900
    assert an.highest_point({0.1: None, 0.9: None}) is None


# -- regimes -------------------------------------------------------------------------------------
def marks(mem, gen):
    return an.Landmarks(mem, gen)


def test_landmarks_are_the_first_evaluations_at_the_thresholds():
    steps = np.arange(100, 1001, 100)
    train = np.where(steps >= 300, 1.0, 0.5)
    test = np.where(steps >= 800, 0.95, 0.1)
    m = an.landmarks(steps, train, test, 0.99, 0.95)
    assert (m.memorization_step, m.generalization_step, m.delay) == (300, 800, 500)
    assert an.landmarks(steps, train, test, 0.99, 0.96).generalization_step is None


@pytest.mark.parametrize("mem,gen,eval_every,rule,regime", [
    (400, None, 100, an.RegimeRule(), an.INSUFFICIENCY),   # never generalises
    (None, None, 100, an.RegimeRule(), an.INSUFFICIENCY),
    (500, 800, 100, an.RegimeRule(), an.SURPLUS),          # the README's 2,873 pairs: together
    (400, 800, 100, an.RegimeRule(), an.SURPLUS),          # delay == 1 x mem: at the tolerance
    (400, 810, 10, an.RegimeRule(), an.SUFFICIENCY),       # just past it
    (400, 3200, 100, an.RegimeRule(), an.SUFFICIENCY),     # the README's 2,000 pairs: grokking
    (400, 3200, 100, an.RegimeRule(delay_factor=10), an.SURPLUS),
    (10, 30, 10, an.RegimeRule(), an.SURPLUS),             # the floor: 2 eval intervals beat 1 x 10 steps
    (10, 30, 10, an.RegimeRule(floor_evals=1), an.SUFFICIENCY),
    (None, 500, 100, an.RegimeRule(), an.SURPLUS),         # generalised without memorising: no lag
    (600, 500, 100, an.RegimeRule(), an.SURPLUS),          # generalised first
])
def test_each_regime(mem, gen, eval_every, rule, regime):
    assert an.classify(marks(mem, gen), eval_every, rule) == regime


def test_regime_rule_states_its_thresholds():
    text = an.RegimeRule(1.5, 3).describe()
    assert "1.5 x memorisation step" in text and "3 eval intervals" in text


# -- the critical data size ------------------------------------------------------------------------
def test_peak_size_takes_the_largest_value_and_the_smaller_size_on_a_tie():
    assert an.peak_size({1000: 300.0, 1500: 900.0, 2000: 200.0, 500: None}) == 1500
    assert an.peak_size({1000: 900.0, 1500: 900.0}) == 1000
    assert an.peak_size({1000: None}) is None


def test_threshold_peaks_per_threshold():
    runs = {1000: [{0.1: 50, 0.9: None}, {0.1: 70, 0.9: None}],
            1500: [{0.1: 40, 0.9: 2000}, {0.1: 40, 0.9: 1000}],
            2000: [{0.1: 30, 0.9: 600}, {0.1: 30, 0.9: 400}]}
    assert an.threshold_peaks(runs, (0.1, 0.9)) == {0.1: 1000, 0.9: 1500}


@pytest.mark.parametrize("generalised,size,note", [
    ({500: False, 1000: True, 1500: True}, 1000, ""),
    ({500: True, 1000: True}, 500, "at or below the grid"),
    ({500: False, 1000: False}, None, "above the grid"),
    ({500: False, 1000: True, 1500: False}, None, "above the grid"),
    ({500: False, 1000: True, 1500: False, 2000: True}, 2000, "non-monotone: also generalises at a smaller size, 1000"),
])
def test_one_seeds_critical_size_needs_every_larger_size_to_generalise(generalised, size, note):
    got_size, got_note = an.seed_critical_size(generalised)
    assert got_size == size and note in got_note and (note or not got_note)


def records(table):
    """{seed: {size: gen_step or None}} -> (size, seed, gen_step) rows."""
    return [(size, seed, gen) for seed, row in table.items() for size, gen in row.items()]


def test_cds_when_seeds_agree():
    cds = an.critical_data_size(records({0: {1000: None, 1500: 3000, 2000: 800},
                                         1: {1000: None, 1500: 2000, 2000: 600}}))
    assert (cds["estimate"], cds["low"], cds["high"], cds["seeds_disagree"]) == (1500, 1500, 1500, False)
    assert cds["peak_size"] == 1500 and cds["peak_mean_generalization_step"] == 2500
    assert cds["per_size"][0] == {"train_size": 1000, "seeds": 2, "generalised": 0, "mean_generalization_step": None}


def test_cds_when_seeds_disagree_is_the_median_with_the_spread():
    # The README's case: 1,500 pairs generalised with seed 0 and not with seed 1.
    cds = an.critical_data_size(records({0: {1000: None, 1500: 9300, 2000: 3200, 3000: 900},
                                         1: {1000: None, 1500: None, 2000: None, 3000: 2850},
                                         2: {1000: 9000, 1500: 5000, 2000: 3000, 3000: 1000}}))
    assert [s["critical_size"] for s in cds["per_seed"]] == [1500, 3000, 1000]
    assert (cds["estimate"], cds["low"], cds["high"], cds["seeds_disagree"]) == (1500, 1000, 3000, True)
    assert "at or below the grid" in cds["per_seed"][2]["note"]
    # The peak counts only sizes where every seed generalised: 1,500 and 2,000 (one seed never did) are left out.
    assert cds["peak_size"] == 3000 and math.isclose(cds["peak_mean_generalization_step"], (900 + 2850 + 1000) / 3)
    assert [p["generalised"] for p in cds["per_size"]] == [1, 2, 2, 3]


def test_the_peak_leaves_out_sizes_that_not_every_seed_ran():
    # The model-wise grid's case: hidden 64 ran 2,000 pairs with seed 0 only, and that one seed was slow
    # there; a one-seed mean is not comparable with three-seed means, so the peak stays at 1,000.
    cds = an.critical_data_size(records({0: {500: None, 1000: 2100, 1500: 700, 2000: 2450},
                                         1: {500: None, 1000: 1800, 1500: 650},
                                         2: {500: None, 1000: 2400, 1500: 1050}}))
    assert cds["peak_size"] == 1000 and cds["peak_mean_generalization_step"] == 2100
    assert cds["per_size"][-1] == {"train_size": 2000, "seeds": 1, "generalised": 1,
                                   "mean_generalization_step": 2450.0}


def test_cds_with_an_even_number_of_seeds_lies_between_them():
    cds = an.critical_data_size(records({0: {1000: 1, 1500: 1, 2000: 1}, 1: {1000: None, 1500: 1, 2000: 1}}))
    assert (cds["estimate"], cds["low"], cds["high"]) == (1250, 1000, 1500)


def test_cds_with_seeds_above_the_grid():
    three = an.critical_data_size(records({0: {1000: None, 2000: 5}, 1: {1000: None, 2000: None},
                                           2: {1000: 5, 2000: 5}}))
    assert (three["estimate"], three["low"], three["high"]) == (2000, 1000, None)
    assert "above the grid" in three["per_seed"][1]["note"]
    two = an.critical_data_size(records({0: {1000: None, 2000: 5}, 1: {1000: None, 2000: None}}))
    assert (two["estimate"], two["low"], two["high"]) == (None, 2000, None)
    none = an.critical_data_size(records({0: {1000: None, 2000: None}}))
    assert (none["estimate"], none["low"], none["high"], none["peak_size"]) == (None, None, None, None)
