"""AdjustableDropout: Keras's Dropout with a rate held in a variable."""

import functools

import numpy as np
import pytest
from keras import ops

from kreg.layers import AdjustableDropout
from layer_test_case import run_layer_test


@pytest.mark.parametrize(
    "kwargs, input_shape",
    [
        ({"rate": 0.3}, (4, 6)),
        ({"rate": 0.5, "noise_shape": (None, 1, 1, None), "seed": 3}, (3, 4, 4, 2)),
    ],
)
def test_layer_contract(kwargs, input_shape, tmp_path):
    run_layer_test(
        functools.partial(AdjustableDropout, **kwargs),
        input_shape=input_shape,
        expected_output_shape=input_shape,
        tmp_path=tmp_path,
        supports_masking=True,
    )


def test_mask_follows_noise_shape_and_rate():
    layer = AdjustableDropout(0.4, noise_shape=(None, 1, 1, None), seed=2)
    x = np.ones((256, 3, 3, 16), "float32")
    y = ops.convert_to_numpy(layer(x, training=True))
    assert np.all(y == y[:, :1, :1, :]), "a spatial mask must be constant over the spatial axes"
    kept = y[:, 0, 0, :] != 0
    assert kept.mean() == pytest.approx(0.6, abs=0.03), "fraction kept"
    np.testing.assert_allclose(
        y[y != 0], 1 / 0.6, rtol=1e-6, err_msg="kept units scaled by 1 / (1 - rate)"
    )
    layer.rate = 0.1
    kept = ops.convert_to_numpy(layer(x, training=True))[:, 0, 0, :] != 0
    assert kept.mean() == pytest.approx(0.9, abs=0.03), "the new rate applies at the next call"
    np.testing.assert_array_equal(
        ops.convert_to_numpy(layer(x)), x, err_msg="identity at inference"
    )


@pytest.mark.parametrize("noise_shape", ["abc", (None, 0), (2.5,), 3])
def test_bad_noise_shape_is_refused_at_construction(noise_shape):
    with pytest.raises(ValueError, match="noise_shape"):
        AdjustableDropout(0.2, noise_shape=noise_shape)


def test_bad_rate_is_refused():
    with pytest.raises(ValueError, match="rate"):
        AdjustableDropout(1.0)
