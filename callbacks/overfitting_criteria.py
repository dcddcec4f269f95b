"""The tests `OverfittingDetector` can apply to a pair of learning curves.

Each takes the curves seen so far, signed so that lower is better (a quantity
maximized, such as accuracy, enters negated), and says whether the run is
overfitting at the last epoch. `patience` is the number of epochs a criterion
looks back over; `threshold` is each criterion's own level; `noise` is the
validation curve's noise estimated from the run (`curve_noise`), or for an
accuracy over a known number of validation samples its binomial standard
error (`accuracy_noise`).

- `"noise"` (default): validation is worse than its best by more than
  `threshold` (1.5) times its noise at each of the last `CONFIRM` (2) epochs,
  while training improved after that best (the U shape). Before the noise
  exists (the first 6 validated epochs), "worse" is Prechelt's GL above
  `WARM_UP_GL` (2) percent (and more than `min_delta`) instead. A memorizing plateau
  (validation flat within its noise) is not overfitting: the detector calls
  it "saturated".
- `"gl"`: Prechelt's GL_alpha: validation is more than `threshold` (5) percent
  above its best.
- `"pq"`: Prechelt's PQ_alpha: GL divided by the training progress P_k over a
  strip of `patience` epochs exceeds `threshold` (0.5).
- `"up"`: Prechelt's UP_s: validation at the end of `threshold` (2) successive
  strips of `patience` epochs was higher than at the end of the strip before.
- `"p_value"`: a significance test in the spirit of CatBoost's `IncToDec`
  detector: the one-sided p-value that validation still improves (a falling
  least-squares trend over the last `2 * patience` epochs, Student's t) is at
  least `threshold` (0.2) while training falls significantly (p < 0.05).

Reference: Prechelt, "Early Stopping - But When?", 1998, section 2.2 (GL, PQ,
UP); CatBoost's overfitting detector documentation (IncToDec).
"""

import math
import statistics

CRITERIA = ("noise", "gl", "pq", "up", "p_value")
# "noise": 1.5 noise SDs with the Savitzky-Golay noise of `curve_noise`, chosen on
# the tuning half of bench/data/corpus (`bench/overfitting_detector.py --tune`,
# docs/BENCHMARKS.md).
DEFAULT_THRESHOLDS = {"noise": 1.5, "gl": 5.0, "pq": 0.5, "up": 2, "p_value": 0.2}
# Epochs in a row validation must lie above its noise band: one noisy epoch
# above it is no overfitting.
CONFIRM = 2
# The noise of a curve smooth to float precision: this fraction of its smallest
# absolute value (a positive loss's best; an accuracy, entered negated, its worst).
NOISE_FLOOR = 1e-3
# Until the noise exists, the `"noise"` test asks validation to be more than this
# many percent above its best (Prechelt's GL_alpha, 1998, section 2.2, alpha from
# his grid 1, 2, 3, 5; chosen on the tuning half of bench/data/corpus): a run
# whose validation minimum comes in its first epochs can be flagged before the
# 7th. Only a positive monitor (a loss) has a GL; an accuracy waits for its noise.
WARM_UP_GL = 2.0
# Residuals (epochs with two neighbours on each side) needed before the noise,
# and so any state that rests on it, is estimated: 3, so the 7th validated epoch
# is the first judged (chosen among 2-5 on the tuning half of bench/data/corpus,
# `bench/overfitting_detector.py --tune`, docs/BENCHMARKS.md).
MIN_RESIDUALS = 3


# The 5-point quadratic Savitzky-Golay smoothing weights (Savitzky & Golay,
# 1964, table I): the fitted value of a parabola through 5 equally spaced points.
SAVGOL_WEIGHTS = (-3.0 / 35.0, 12.0 / 35.0, 17.0 / 35.0, 12.0 / 35.0, -3.0 / 35.0)
# For independent noise of variance sigma^2, the variance of an epoch's residual
# around that smoothing: ((1 - 17/35)^2 + (3^2 + 12^2 + 12^2 + 3^2) / 35^2) sigma^2.
SAVGOL_RESIDUAL_VARIANCE = 630.0 / 1225.0


def curve_noise(values):
    """Standard deviation of a curve's epoch-to-epoch noise, from the curve itself.

    The residual of each epoch around a 5-point quadratic Savitzky-Golay
    smoothing (the parabola fitted to it and its two neighbours on each side:
    zero on a parabola, so neither a trend nor the bend of a descent counts as
    noise), scaled to a standard deviation by the median absolute deviation
    (1.4826 * MAD, robust to a single outlier epoch) and the residual's
    variance for independent noise (`SAVGOL_RESIDUAL_VARIANCE`). `None` until
    `MIN_RESIDUALS` residuals exist; at least `NOISE_FLOOR` of the smallest
    absolute value (the best of a positive loss), so a curve smooth to float
    precision has a band at all.

    Reference: Savitzky and Golay, "Smoothing and Differentiation of Data by
    Simplified Least Squares Procedures", Analytical Chemistry 36(8), 1964.
    """
    if len(values) < MIN_RESIDUALS + 4:
        return None
    residuals = [
        abs(values[i] - sum(w * v for w, v in zip(SAVGOL_WEIGHTS, values[i - 2 : i + 3])))
        for i in range(2, len(values) - 2)
    ]
    sigma = 1.4826 * statistics.median(residuals) / math.sqrt(SAVGOL_RESIDUAL_VARIANCE)
    return max(sigma, NOISE_FLOOR * min(abs(v) for v in values))


def accuracy_noise(accuracy, samples):
    """Binomial standard error of an accuracy (a fraction) measured on `samples` samples.

    `sqrt(p (1 - p) / n)` at `p = accuracy`: the spread of the fraction of `n`
    independent samples called right. Known from the first epoch (no curve to
    estimate it from), and at least `1 / n`, one sample's worth, so that an
    accuracy of 0 or 1 still has a band.
    """
    p = min(max(float(accuracy), 0.0), 1.0)
    return max(math.sqrt(p * (1.0 - p) / samples), 1.0 / samples)


def noise_band(train, val, patience, threshold, min_delta, noise):
    del patience
    best = min(range(len(val)), key=val.__getitem__)
    if len(val) - 1 - best < CONFIRM:
        return False
    if noise is None:
        # Before the run's own noise exists (`MIN_RESIDUALS`): Prechelt's GL above
        # `WARM_UP_GL` percent at each of the last `CONFIRM` epochs, and by more
        # than `min_delta`, which raises this band as it raises the noise band.
        above = min(val[-CONFIRM:]) > val[best] + min_delta and all(
            generalization_loss(val[: len(val) - k]) > WARM_UP_GL for k in range(CONFIRM)
        )
    else:
        above = min(val[-CONFIRM:]) > val[best] + threshold * noise + min_delta
    return above and min(train[best + 1 :]) < train[best]  # training improved after the best


def generalization_loss(val):
    """Prechelt's GL(t) in percent; needs a positive error (a loss)."""
    best = min(val)
    return 100.0 * (val[-1] / best - 1.0) if best > 0 else 0.0


def gl(train, val, patience, threshold, min_delta, noise):
    del train, patience, min_delta, noise
    return generalization_loss(val) > threshold


def pq(train, val, patience, threshold, min_delta, noise):
    del min_delta, noise
    if len(train) < patience:
        return False
    strip = train[-patience:]
    best = min(strip)
    if best <= 0:
        return False
    training_progress = 1000.0 * (sum(strip) / (patience * best) - 1.0)
    return training_progress > 0 and generalization_loss(val) / training_progress > threshold


def up(train, val, patience, threshold, min_delta, noise):
    del train, noise
    strips = int(threshold)
    if len(val) % patience != 0 or len(val) < patience * (strips + 1):
        return False
    ends = val[patience - 1 :: patience][-(strips + 1) :]
    return all(later > earlier + min_delta for earlier, later in zip(ends, ends[1:]))


def p_value(train, val, patience, threshold, min_delta, noise):
    del min_delta, noise
    window = 2 * patience
    if len(val) < max(window, 4):
        return False
    return (
        decreasing_trend_p_value(val[-window:]) >= threshold
        and decreasing_trend_p_value(train[-window:]) < 0.05
    )


def decreasing_trend_p_value(values):
    """One-sided p-value of a least-squares slope < 0 (Student's t, n - 2 dof)."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2.0, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sxx
    residual = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in enumerate(values))
    if residual <= 0:
        return 0.0 if slope < 0 else 1.0
    t = slope / math.sqrt(residual / (n - 2) / sxx)
    return student_t_cdf(t, n - 2)


def student_t_cdf(t, dof):
    """P(T <= t) for Student's t with `dof` degrees of freedom."""
    x = dof / (dof + t * t)
    tail = 0.5 * regularized_incomplete_beta(dof / 2.0, 0.5, x)
    return tail if t < 0 else 1.0 - tail


def regularized_incomplete_beta(a, b, x):
    """I_x(a, b) by its continued fraction (Numerical Recipes, section 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_incomplete_beta(b, a, 1.0 - x)
    front = math.exp(log_front) / a
    c, d, fraction = 1.0, 0.0, 1.0
    for i in range(200):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = (m * (b - m) * x) / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
        else:
            numerator = -((a + m) * (a + b + m) * x) / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > 1e-30 else 1e-30)
        c = 1.0 + numerator / c if abs(c) > 1e-30 else 1e-30
        fraction *= c * d
        if abs(1.0 - c * d) < 1e-12:
            break
    return front * (fraction - 1.0)


TESTS = {"noise": noise_band, "gl": gl, "pq": pq, "up": up, "p_value": p_value}
