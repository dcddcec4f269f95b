"""Alternatives to the default overfitting test, replayed on the tuning half only.

Used by `bench/overfitting_detector.py --tune`: each variant swaps one part of
`kreg.callbacks.overfitting_criteria` (the noise estimator or the `"noise"`
test) for the length of a replay, so that it is judged by the same objective
on the same runs as the shipped defaults. Two variants listed here before
were adopted and are now the default (the Savitzky-Golay noise at 1.5 SD, and
`warm-up GL 2 confirmed`); the others do not ship.

- `pk`: the U-shape's "training still improves" read as Prechelt's training
  progress P_k (1998, section 2.2): 1000 * (mean / min - 1) over the last 5
  training values above 0.1 per mille.
- `cusum k h`: a one-sided CUSUM (Page, 1954) of validation above its best in
  noise units, drift `k`, alarm above `h`: fires in one epoch on a large rise.
- `jump z`: also fire on a single epoch more than `z` noise units above the best.
- `running mean, threshold t`: noise from the residuals around the mean of
  each epoch's two neighbours on each side (the shipped estimator before the
  second wave of the corpus, with its threshold 1 and at 1.5), where the
  default now takes them around a 5-point quadratic Savitzky-Golay smoothing.
- `t band`: the band widened by Student's t quantile for the residuals' count
  (a noise estimated from 3 residuals is itself uncertain).

- `no warm-up GL`: nothing is judged before the noise exists (the shipped
  test before the second wave of the corpus). `pk`, `cusum`, `jump` and
  `t band` judge nothing before it either.

Judging before the run's own noise exists (its first 6 validated epochs; the
default now asks Prechelt's GL above 2 percent at 2 epochs, `WARM_UP_GL`):

- `warm-up GL a`: while the noise is unknown, Prechelt's GL_alpha (1998,
  section 2.2: validation more than `a` percent above its best so far; his
  grid 1, 2, 3, 5), with training improved after that best; the default test
  once the noise exists. `confirmed` asks it of the last 2 epochs (`CONFIRM`).
- `noise prior q`: while the run has under 3 residuals, its noise is a fixed
  fraction of its best validation value, the quantile `q` of the relative
  noise (whole-run `curve_noise` / best) pooled over the tuning half's runs
  (`noise_prior`); the run's own estimate replaces it from the 7th epoch.
"""

import contextlib
import math
import statistics

from kreg.callbacks import overfitting_criteria as criteria
from kreg.callbacks import overfitting_detector as detector_module


def _trained_after_best(train, best):
    return min(train[best + 1 :]) < train[best]


def _training_progress(train, best):
    strip = train[-5:]
    return 1000.0 * (sum(strip) / (len(strip) * min(strip)) - 1.0) > 0.1


def _band_test(confirm=2, jump=None, cusum=None, t_band=False, progress=_trained_after_best):
    def test(train, val, patience, threshold, min_delta, noise):
        if noise is None:
            return False
        best = min(range(len(val)), key=val.__getitem__)
        after = len(val) - 1 - best
        if after < 1:
            return False
        level = threshold
        if t_band:
            level = _t_quantile(_normal_cdf(threshold), max(len(val) - 5, 1))
        above = after >= confirm and min(val[-confirm:]) > val[best] + level * noise + min_delta
        if jump is not None:
            above = above or val[-1] > val[best] + jump * noise + min_delta
        if cusum is not None:
            drift, limit, total = cusum[0], cusum[1], 0.0
            for value in val[best + 1 :]:
                total = max(0.0, total + (value - val[best] - min_delta) / noise - drift)
            above = total > limit
        return above and progress(train, best)

    return test


def _normal_cdf(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _t_quantile(p, dof):
    low, high = 0.0, 50.0
    for _ in range(60):
        middle = (low + high) / 2.0
        low, high = (middle, high) if criteria.student_t_cdf(middle, dof) < p else (low, middle)
    return (low + high) / 2.0


def _running_mean_noise(values):
    """The shipped estimator before the second corpus wave: residuals around the
    mean of each epoch's two neighbours on each side (zero on a straight line,
    not on the bend of a descent; variance 1.25 sigma^2 for independent noise)."""
    if len(values) < criteria.MIN_RESIDUALS + 4:
        return None
    residuals = [
        abs(values[i] - (values[i - 2] + values[i - 1] + values[i + 1] + values[i + 2]) / 4.0)
        for i in range(2, len(values) - 2)
    ]
    sigma = 1.4826 * statistics.median(residuals) / math.sqrt(1.25)
    return max(sigma, criteria.NOISE_FLOOR * min(abs(v) for v in values))


def _gl_warm_up(alpha, confirm=1):
    def test(train, val, patience, threshold, min_delta, noise):
        if noise is not None:
            return criteria.noise_band(train, val, patience, threshold, min_delta, noise)
        best = min(range(len(val)), key=val.__getitem__)
        if len(val) - 1 - best < confirm:
            return False
        above = all(
            criteria.generalization_loss(val[: len(val) - k]) > alpha for k in range(confirm)
        )
        return above and _trained_after_best(train, best)

    return test


def noise_prior(runs, quantile):
    """The `quantile` of the relative validation-loss noise (whole-run
    `curve_noise` over the best value) over `runs`."""
    relative = sorted(
        criteria.curve_noise(run["history"]["val_loss"]) / min(run["history"]["val_loss"])
        for run in runs
    )
    return statistics.quantiles(relative, n=100, method="inclusive")[round(quantile * 100) - 1]


def _prior_noise(fraction):
    def noise(values):
        own = criteria.curve_noise(values)
        return own if own is not None else fraction * min(abs(v) for v in values)

    return noise


def warm_up_variants(tuning_runs):
    """The variants that judge before the run's own noise exists; the noise
    prior is pooled from `tuning_runs` (the tuning half only)."""
    variants = {f"warm-up GL {alpha}": {"test": _gl_warm_up(alpha)} for alpha in (1, 2, 3, 5)}
    for alpha in (2, 5):
        variants[f"warm-up GL {alpha} confirmed"] = {"test": _gl_warm_up(alpha, criteria.CONFIRM)}
    for quantile in (0.5, 0.75, 0.9):
        fraction = noise_prior(tuning_runs, quantile)
        variants[f"noise prior q{quantile:g} ({fraction:.3g} of the best)"] = {
            "noise": _prior_noise(fraction)
        }
    return variants


def _no_warm_up(train, val, patience, threshold, min_delta, noise):
    if noise is None:
        return False
    return criteria.noise_band(train, val, patience, threshold, min_delta, noise)


VARIANTS = {
    "no warm-up GL": {"test": _no_warm_up},
    "pk": {"test": _band_test(progress=_training_progress)},
    "cusum 0.5 2": {"test": _band_test(cusum=(0.5, 2.0))},
    "cusum 1 3": {"test": _band_test(cusum=(1.0, 3.0))},
    "jump 3": {"test": _band_test(jump=3.0)},
    "jump 4": {"test": _band_test(jump=4.0)},
    "running mean, threshold 1": {"noise": _running_mean_noise, "threshold": 1.0},
    "running mean, threshold 1.5": {"noise": _running_mean_noise, "threshold": 1.5},
    "t band": {"test": _band_test(t_band=True)},
}


@contextlib.contextmanager
def variant(spec, min_residuals):
    """Replays run with `spec`'s test / noise and `min_residuals` in place."""
    saved = criteria.TESTS["noise"], detector_module.curve_noise, criteria.MIN_RESIDUALS
    try:
        criteria.TESTS["noise"] = spec.get("test", saved[0])
        detector_module.curve_noise = spec.get("noise", saved[1])
        criteria.MIN_RESIDUALS = min_residuals
        yield
    finally:
        criteria.TESTS["noise"], detector_module.curve_noise, criteria.MIN_RESIDUALS = saved
