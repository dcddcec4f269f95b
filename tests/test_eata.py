"""adapt_batchnorm(method="eata"): EATA's sample filters and weights, SAR's collapse guard."""

import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from kreg import adapt_batchnorm
from kreg.adapt.eata import SampleSelection
from kreg.adapt.eata import entropy_of
from kreg.adapt.entropy import class_probabilities


def _cnn(classes=3, seed=0, head_scale=1.0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = inputs
    for name in ("bn1", "bn2"):
        x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(name=name)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.initializers.RandomNormal(stddev=head_scale)
    return keras.Model(inputs, keras.layers.Dense(classes, "softmax", kernel_initializer=head)(x))


def _target(n=64, seed=0):
    return np.random.default_rng(seed).normal(1.0, 2.0, (n, 6, 6, 1)).astype("float32")


def _weights(model):
    return {w.path: ops.convert_to_numpy(w).copy() for w in model.weights}


def _changed(before, after):
    return {path for path in before if not np.array_equal(before[path], after[path])}


def test_unreliable_samples_get_no_weight_and_reliable_ones_their_confidence():
    selection = SampleSelection(entropy_factor=0.4, redundancy_threshold=None)
    probabilities = np.array(
        [
            [0.98, 0.01, 0.01],  # confident: kept
            [0.34, 0.33, 0.33],  # nearly uniform: entropy ~ ln 3, dropped
            [0.6, 0.3, 0.1],  # entropy 0.90 > 0.4 ln 3 = 0.44: dropped
            [0.02, 0.96, 0.02],  # kept
        ]
    )
    weights, entropy = selection.weights(probabilities)
    margin = 0.4 * math.log(3)
    np.testing.assert_allclose(entropy, entropy_of(probabilities))
    assert (weights[[1, 2]] == 0).all()
    np.testing.assert_allclose(weights[[0, 3]], np.exp(margin - entropy[[0, 3]]), rtol=1e-6)
    # The average of accepted predictions is that of the kept rows only.
    np.testing.assert_allclose(selection.average_prediction, probabilities[[0, 3]].mean(0))


def test_predictions_like_those_already_learned_from_are_dropped_as_redundant():
    selection = SampleSelection(entropy_factor=0.4, redundancy_threshold=0.9)
    first = np.array([[0.98, 0.01, 0.01]] * 4)
    assert (selection.weights(first)[0] > 0).all()  # nothing learned yet: all kept
    second = np.array([[0.97, 0.02, 0.01], [0.01, 0.98, 0.01]])
    weights, _ = selection.weights(second)
    assert weights[0] == 0  # the same class again (cosine ~ 1)
    assert weights[1] > 0  # another class (cosine ~ 0.02)


def test_eata_trains_only_scale_and_shift_and_lowers_the_entropy():
    x = _target(128)
    model, reestimated = _cnn(), _cnn()
    adapt_batchnorm(reestimated, x, verbose=0)
    before = _weights(model)
    report = adapt_batchnorm(
        model,
        x,
        method="eata",
        epochs=5,
        learning_rate=0.05,
        entropy_factor=1.0,
        redundancy_threshold=None,
        batch_size=32,
        verbose=0,
    )
    assert report.method == "eata" and report.affine_updated
    changed = _changed(before, _weights(model))
    assert {"bn1/gamma", "bn1/beta", "bn2/gamma", "bn2/beta"} <= changed
    assert all(path.startswith(("bn1/", "bn2/")) for path in changed), changed
    entropy = lambda m: entropy_of(m.predict(x, verbose=0)).mean()  # noqa: E731
    assert entropy(model) < entropy(reestimated) - 0.05


def test_a_batch_without_a_reliable_sample_changes_no_scale_or_shift():
    # A 3-class model with a tiny head predicts close to uniform whatever its
    # batch norms do: every entropy is near ln 3, above 0.4 ln 3, so EATA has
    # nothing to learn from; with the margin at ln 3 itself, the same data moves
    # scale and shift.
    x = _target()
    model = _cnn(head_scale=0.01)
    assert entropy_of(model.predict(x, verbose=0)).min() > 0.9 * math.log(3)
    before = _weights(model)
    adapt_batchnorm(model, x, method="eata", learning_rate=0.05, verbose=0)
    assert not any(path.endswith(("gamma", "beta")) for path in _changed(before, _weights(model)))
    adapt_batchnorm(model, x, method="eata", learning_rate=0.05, entropy_factor=1.0, verbose=0)
    assert {"bn2/gamma", "bn2/beta"} <= _changed(before, _weights(model))


def _degenerate_run(collapse_factor):
    # One input repeated: batch statistics leave only the shift, which entropy
    # minimization drives towards one confident class for every sample.
    x = np.repeat(_target(1), 256, axis=0) + np.random.default_rng(1).normal(
        0, 1e-3, (256, 6, 6, 1)
    )
    model = _cnn()
    source = _weights(model)
    report = adapt_batchnorm(
        model,
        x.astype("float32"),
        method="eata",
        epochs=3,
        learning_rate=0.5,
        entropy_factor=1.0,
        redundancy_threshold=None,
        collapse_factor=collapse_factor,
        batch_size=16,
        verbose=0,
    )
    return model, source, report, x


def test_the_collapse_guard_resets_scale_and_shift_on_a_degenerate_stream():
    collapsed, _, unguarded, x = _degenerate_run(collapse_factor=0.0)
    assert unguarded.collapse_resets == 0
    assert entropy_of(collapsed.predict(x, verbose=0)).mean() < 0.03 * math.log(3)

    model, source, report, _ = _degenerate_run(collapse_factor=0.03)
    assert report.collapse_resets >= 1
    assert "collapse reset" in str(report)
    # After its last reset the guard leaves less than one collapse's worth of
    # drift: the scale and shift end closer to the source than unguarded.
    after, drifted = _weights(model), _weights(collapsed)
    distance = lambda w: sum(np.abs(w[p] - source[p]).sum() for p in source if p.endswith("beta"))  # noqa: E731
    assert distance(after) < distance(drifted)


@pytest.mark.parametrize(
    "arguments, match",
    [
        (dict(entropy_factor=0.0), "entropy_factor"),
        (dict(entropy_factor=1.5), "entropy_factor"),
        (dict(redundancy_threshold=-0.1), "redundancy_threshold"),
        (dict(collapse_factor=1.0), "collapse_factor"),
        (dict(collapse_factor="low"), "collapse_factor"),
    ],
)
def test_bad_eata_arguments_are_refused_before_anything_runs(arguments, match):
    model = _cnn()
    before = _weights(model)
    with pytest.raises(ValueError, match=match):
        adapt_batchnorm(model, _target(), method="eata", verbose=0, **arguments)
    assert not _changed(before, _weights(model))


@pytest.mark.parametrize("classes", [1, 4])
@pytest.mark.parametrize("from_logits", [False, True])
def test_class_probabilities_of_numpy_outputs_match_the_backends(classes, from_logits):
    # `predict_on_batch` returns NumPy, which the adapters turn into
    # probabilities in NumPy; a tensor goes through the backend. Logits of
    # +-100 saturate both, with no overflow warning from NumPy.
    rng = np.random.default_rng(0)
    scale = 100.0 if from_logits else 1.0
    outputs = (rng.uniform(-1, 1, (6, classes)) * scale).astype("float32")
    if not from_logits:
        outputs = np.abs(outputs) / np.abs(outputs).sum(-1, keepdims=True).clip(min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = class_probabilities(outputs, from_logits)
    assert isinstance(got, np.ndarray) and got.shape == (6, max(classes, 2))
    want = ops.convert_to_numpy(class_probabilities(ops.convert_to_tensor(outputs), from_logits))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "outputs, finite_rows",
    [
        # A float16 head (mixed precision) whose logits overflowed to +-inf.
        (np.array([[np.inf, 1, 0], [-np.inf, -np.inf, -np.inf], [1, 2, 3]], "float16"), [2]),
        # float64 logits beyond float32's range: inf once cast.
        (np.array([[1e300, 0.0, 0.0], [1.0, 2.0, 3.0]]), [1]),
        # One sigmoid unit of float64 logits beyond float32's range: saturated.
        (np.array([[1e300], [-1e300], [0.5]]), [0, 1, 2]),
    ],
)
def test_class_probabilities_of_overflowed_numpy_logits_warn_nothing(outputs, finite_rows):
    # A model can overflow on finite inputs, which the adapters' NaN check lets
    # through: its rows come out not finite (as from the backend's softmax),
    # without a raw NumPy RuntimeWarning in the user's stream.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = class_probabilities(outputs, from_logits=True)
    assert got.dtype == np.float32
    finite = np.isfinite(got).all(axis=-1)
    np.testing.assert_array_equal(np.flatnonzero(finite), finite_rows)
    clipped = np.clip(outputs.astype("float64"), -50, 50)
    if outputs.shape[-1] == 1:
        want = np.concatenate([1 / (1 + np.exp(clipped)), 1 / (1 + np.exp(-clipped))], -1)
    else:
        want = np.exp(clipped) / np.exp(clipped).sum(-1, keepdims=True)
    np.testing.assert_allclose(got[finite_rows], want[finite_rows], rtol=1e-6, atol=1e-7)
