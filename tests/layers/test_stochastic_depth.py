import functools
import warnings

import keras
import numpy as np
import pytest

import kreg
from conftest import to_numpy as _numpy
from kreg.layers import StochasticDepth
from layer_test_case import run_layer_test


@pytest.mark.parametrize(
    "kwargs, shape",
    [({"rate": 0.2}, (4, 5, 5, 3)), ({"rate": 0.5, "seed": 3}, (4, 6)), ({"rate": 0.0}, (2, 3, 4))],
)
def test_layer_contract(kwargs, shape, tmp_path):
    run_layer_test(
        functools.partial(StochasticDepth, **kwargs),
        input_shape=[shape, shape],
        expected_output_shape=shape,
        tmp_path=tmp_path,
        run_training_check=False,  # no weights of its own: trained below in a block
    )


def _block(rate):
    inputs = keras.Input((6, 6, 3))
    branch = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    return keras.Model(inputs, StochasticDepth(rate, seed=1)([inputs, branch]))


def test_trains_saves_and_loads_inside_a_residual_block(tmp_path):
    from layer_test_case import _check_save_and_load
    from layer_test_case import _check_training_step

    x = np.random.default_rng(0).standard_normal((8, 6, 6, 3)).astype("float32")
    for jit_compile in (False, "auto"):
        _check_training_step(lambda: _block(0.3), (8, 6, 6, 3), x, jit_compile)
    _check_save_and_load(_block(0.3), x, tmp_path)


def _paper_stochastic_depth(shortcut, residual, rate, rng):
    """Huang et al. 2016, eq. (2) and the test-time rule, per sample: b ~ Bernoulli(1 - p),
    H = shortcut + b * f(x) / (1 - p) (inverted, so inference is shortcut + f(x))."""
    keep = rng.random(len(shortcut)) >= rate
    return shortcut + keep.reshape((-1,) + (1,) * (shortcut.ndim - 1)) * residual / (1 - rate), keep


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_drops_whole_samples_at_the_paper_rate(rate):
    n = 4000
    shortcut = np.full((n, 3, 4), 2.0, "float32")
    residual = np.ones((n, 3, 4), "float32")
    y = _numpy(StochasticDepth(rate, seed=11)([shortcut, residual], training=True))
    flat = y.reshape(n, -1)
    assert np.all(flat == flat[:, :1]), "a sample's branch is partly dropped"
    kept = flat[:, 0] != 2.0
    np.testing.assert_allclose(flat[kept, 0], 2.0 + 1.0 / (1 - rate), rtol=1e-6)
    _, paper_kept = _paper_stochastic_depth(shortcut, residual, rate, np.random.default_rng(0))
    bound = 5 * np.sqrt(2 * rate * (1 - rate) / n)  # difference of two binomial proportions
    assert abs(kept.mean() - paper_kept.mean()) < bound, (
        f"kept {kept.mean():.4f} vs {paper_kept.mean():.4f}"
    )
    # The expected output is shortcut + residual (same bound, on the branch's scale).
    assert abs(y.mean() - 3.0) < bound / (1 - rate) * 1.5


def test_identity_sum_at_inference_and_bad_inputs():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3, 4, 4, 2)).astype("float32")
    expected = _numpy(keras.layers.Add()([b, a]))
    np.testing.assert_array_equal(_numpy(StochasticDepth(0.5)([a, b])), expected)
    np.testing.assert_array_equal(_numpy(StochasticDepth(0.0)([a, b], training=True)), expected)
    with pytest.raises(ValueError, match=r"same shape.*\(None, 4, 3\).*\(None, 4, 1\)"):
        StochasticDepth(0.1)([keras.Input((4, 3)), keras.Input((4, 1))])
    # Batches of different sizes differ in shape too (it was the backend's raw error).
    with pytest.raises(ValueError, match=r"same shape.*\(2, 4\).*\(3, 4\)"):
        StochasticDepth(0.1)(
            [np.ones((2, 4), "float32"), np.ones((3, 4), "float32")], training=True
        )
    with pytest.raises(ValueError, match=r"list of two tensors"):
        StochasticDepth(0.1)(keras.Input((4, 3)))
    for rate, message in [
        (1.0, r"`rate`.*\[0, 1\).*rate=1.0"),
        (-0.5, r"`rate`.*rate=-0.5"),
        ("x", r"`rate`.*'x'"),
    ]:
        with pytest.raises(ValueError, match=message):
            StochasticDepth(rate)


def test_rate_adjustable_on_a_compiled_model():
    """The model outputs the fraction of samples whose branch was dropped."""
    a = keras.Input((8,))
    b = keras.Input((8,))
    layer = StochasticDepth(0.1, seed=3)
    summed = layer([a, b])
    dropped = keras.ops.cast(keras.ops.equal(summed[:, :1], 0.0), "float32")
    model = keras.Model([a, b], dropped + 0.0 * keras.layers.Dense(1)(a))
    model.compile(keras.optimizers.SGD(0.0), "mae")
    zeros, ones = np.zeros((2048, 8), "float32"), np.ones((2048, 8), "float32")
    target = np.zeros((2048, 1), "float32")
    low = model.train_on_batch([zeros, ones], target)
    compiled = model.train_function
    layer.rate = 0.6
    high = model.train_on_batch([zeros, ones], target)
    assert model.train_function is compiled
    assert low == pytest.approx(0.1, abs=0.04) and high == pytest.approx(0.6, abs=0.05), (low, high)


def test_linear_rule_of_huang_et_al():
    rates = kreg.stochastic_depth_rates(4, 0.5)
    np.testing.assert_allclose(rates, [0.125, 0.25, 0.375, 0.5])  # p_l = l / L * p_L
    assert kreg.stochastic_depth_rates(1, 0.2) == [0.2]
    for kwargs, message in [
        ({"num_blocks": 0, "max_rate": 0.1}, r"`num_blocks`.*>= 1.*num_blocks=0"),
        ({"num_blocks": 3, "max_rate": 1.0}, r"`max_rate`.*\[0, 1\).*max_rate=1.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            kreg.stochastic_depth_rates(**kwargs)


def test_propagates_the_mask_as_keras_add_does():
    """A residual add in a masked sequence model (add_stochastic_depth puts one
    there) keeps the mask: Add's logical or of the two, and no warning that
    the mask is destroyed."""
    tokens = np.array([[1, 2, 0, 0], [3, 0, 0, 0]], "int32")
    embedding = keras.layers.Embedding(5, 3, mask_zero=True)
    dense = keras.layers.Dense(3)
    x = embedding(tokens)
    branch = dense(x)
    expected = keras.layers.Add()([x, branch])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*mask.*")
        for training in (False, True):
            y = StochasticDepth(0.5, seed=1)([x, branch], training=training)
            np.testing.assert_array_equal(_numpy(y._keras_mask), _numpy(expected._keras_mask))
        symbolic = keras.Input((4,), dtype="int32")
        embedded = embedding(symbolic)
        y = StochasticDepth(0.5)([embedded, dense(embedded)])
    assert y._keras_mask is not None
