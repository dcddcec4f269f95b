import functools
import itertools

import keras
import numpy as np
import pytest

from conftest import to_numpy as _numpy
from kreg.layers import DropBlock1D
from kreg.layers import DropBlock2D
from kreg.layers import DropBlock3D
from layer_test_case import run_layer_test


@pytest.mark.parametrize(
    "cls, kwargs, input_shape",
    [
        (DropBlock1D, {"rate": 0.2, "block_size": 3, "seed": 1}, (4, 10, 3)),
        (DropBlock2D, {"rate": 0.1, "block_size": 3}, (4, 6, 6, 3)),
        (
            DropBlock2D,
            {"rate": 0.3, "block_size": (2, 3), "data_format": "channels_first", "seed": 2},
            (4, 3, 6, 7),
        ),
        (DropBlock3D, {"rate": 0.2, "block_size": 2, "seed": 3}, (2, 4, 4, 4, 2)),
    ],
)
def test_layer_contract(cls, kwargs, input_shape, tmp_path):
    run_layer_test(
        functools.partial(cls, **kwargs),
        input_shape=input_shape,
        expected_output_shape=input_shape,
        tmp_path=tmp_path,
    )


def _paper_drop_block(x, rate, block, rng):
    """Ghiasi et al. 2018, algorithm 1, on a (batch, *spatial, channels) array,
    transcribed literally (the paper's 2D, on any number of spatial axes): seeds
    drawn at gamma where a whole block fits, each zero of M grown to the block
    around it, then A * M * count(M) / count_ones(M)."""
    sizes = x.shape[1:-1]
    gamma = rate / block ** len(sizes) * np.prod(sizes) / np.prod([s - block + 1 for s in sizes])
    mask = np.ones_like(x)
    seeds = rng.random(x.shape) < gamma
    for n, *position, c in zip(*np.nonzero(seeds)):
        if all(block // 2 <= p < size - (block - 1) // 2 for p, size in zip(position, sizes)):
            window = tuple(slice(p - block // 2, p - block // 2 + block) for p in position)
            mask[(n, *window, c)] = 0.0
    return x * mask * mask.size / max(mask.sum(), 1.0), mask


def _dropped_fraction_samples(draw, repeats):
    return np.array([draw() for _ in range(repeats)])


@pytest.mark.parametrize(
    "cls, shape, rate, block",
    [
        (DropBlock2D, (8, 14, 14, 4), 0.1, 3),
        (DropBlock2D, (8, 14, 14, 4), 0.25, 5),
        (DropBlock2D, (8, 14, 14, 4), 0.15, 4),
        (DropBlock1D, (16, 30, 4), 0.2, 5),
        (DropBlock3D, (4, 8, 8, 8, 2), 0.2, 3),
    ],
)
def test_dropped_fraction_matches_the_paper_algorithm(cls, shape, rate, block):
    x = np.ones(shape, "float32")
    layer = cls(rate, block, seed=3)
    ours = _dropped_fraction_samples(lambda: np.mean(_numpy(layer(x, training=True)) == 0), 20)
    rng = np.random.default_rng(0)
    paper = _dropped_fraction_samples(
        lambda: np.mean(_paper_drop_block(x, rate, block, rng)[1] == 0), 20
    )
    # Both are means of 20 batches: compare within five standard errors of the difference.
    bound = 5 * np.sqrt(ours.var() / len(ours) + paper.var() / len(paper)) + 1e-3
    assert abs(ours.mean() - paper.mean()) < bound, (
        f"dropped {ours.mean():.4f} vs the paper's algorithm {paper.mean():.4f} (bound {bound:.4f})"
    )
    # Overlapping blocks make the dropped fraction a little less than `rate`, in both.
    assert rate * 0.7 < ours.mean() <= rate + bound, f"dropped {ours.mean():.4f} for rate {rate}"


def _assert_whole_blocks(dropped, block):
    """Morphological opening on a (batch, *spatial, channels) mask: the windows
    wholly dropped, grown back to their blocks, give every dropped unit (no unit
    dropped outside a whole block)."""
    spatial = tuple(range(1, dropped.ndim - 1))
    windows = np.lib.stride_tricks.sliding_window_view(dropped, (block,) * len(spatial), spatial)
    fully = windows.all(axis=tuple(range(dropped.ndim, windows.ndim)))
    regrown = np.zeros_like(dropped)
    for offset in itertools.product(range(block), repeat=len(spatial)):
        index = (slice(None), *(slice(o, o + n) for o, n in zip(offset, fully.shape[1:-1])))
        regrown[index] |= fully
    np.testing.assert_array_equal(
        regrown, dropped, err_msg="a dropped unit lies outside any whole block"
    )


@pytest.mark.parametrize(
    "cls, shape, block",
    [
        (DropBlock2D, (4, 12, 12, 3), 2),
        (DropBlock2D, (4, 12, 12, 3), 3),
        (DropBlock2D, (4, 12, 12, 3), 5),
        (DropBlock1D, (16, 20, 3), 4),
        (DropBlock3D, (4, 7, 7, 7, 3), 3),
    ],
)
def test_dropped_units_form_whole_blocks_inside_the_map(cls, shape, block):
    x = np.ones(shape, "float32")
    dropped = _numpy(cls(0.2, block, seed=5)(x, training=True)) == 0
    assert dropped.any()
    _assert_whole_blocks(dropped, block)
    assert not np.array_equal(dropped[..., 0], dropped[..., 1]), "channels share a mask"


def test_channels_first_drops_whole_blocks_of_the_spatial_axes():
    x = np.ones((4, 3, 10, 10), "float32")
    dropped = (
        _numpy(DropBlock2D(0.3, 3, data_format="channels_first", seed=4)(x, training=True)) == 0
    )
    assert 0.1 < dropped.mean() < 0.4
    _assert_whole_blocks(np.moveaxis(dropped, 1, -1), 3)


def test_expected_value_is_kept_by_the_rescaling():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 10, 10, 4)).astype("float32")
    layer = DropBlock2D(0.2, 3, seed=7)
    ones = _numpy(layer(np.ones_like(x), training=True))
    np.testing.assert_allclose(ones.mean(), 1.0, rtol=1e-5)  # count(M) / count_ones(M) exactly
    kept = ones != 0
    np.testing.assert_allclose(ones[kept], ones[kept].flat[0], rtol=1e-6)  # one scale for the batch
    average = np.mean([_numpy(layer(x, training=True)) for _ in range(200)], axis=0)
    assert np.abs(average - x).mean() < 0.1 * np.abs(x).mean(), "E[DropBlock(x)] is not x"


def test_identity_at_inference_and_rate_adjustable_without_retrace():
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 2)).astype("float32")
    layer = DropBlock2D(0.3, 3)
    np.testing.assert_array_equal(_numpy(layer(x)), x)
    np.testing.assert_array_equal(_numpy(DropBlock2D(0.0, 3)(x, training=True)), x)

    inputs = keras.Input((16, 16, 8))
    dropped = DropBlock2D(0.1, 3, seed=2)(inputs)
    fraction = keras.ops.mean(
        keras.ops.cast(keras.ops.equal(dropped, 0), "float32"), axis=(1, 2, 3)
    )[:, None]
    model = keras.Model(
        inputs, fraction + 0.0 * keras.layers.Dense(1)(keras.layers.Flatten()(inputs))
    )
    model.compile(keras.optimizers.SGD(0.0), "mae")
    ones, zeros = np.ones((16, 16, 16, 8), "float32"), np.zeros((16, 1), "float32")
    low = model.train_on_batch(ones, zeros)
    compiled = model.train_function
    model.layers[1].rate = 0.4
    high = model.train_on_batch(ones, zeros)
    assert model.train_function is compiled
    assert low < 0.12 and high > 0.25, (low, high)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rate": 1.0, "block_size": 3}, r"`rate`.*\[0, 1\).*rate=1.0"),
        ({"rate": -0.1, "block_size": 3}, r"`rate`.*rate=-0.1"),
        ({"rate": 0.1, "block_size": 0}, r"`block_size`.*positive.*block_size=0"),
        ({"rate": 0.1, "block_size": (3, 3, 3)}, r"`block_size`.*tuple of 2.*\(3, 3, 3\)"),
        (
            {"rate": 0.1, "block_size": 3, "data_format": "NHWC"},
            r"`data_format`.*channels_last.*'NHWC'",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropBlock2D(**kwargs)


def test_block_larger_than_the_map_or_wrong_rank_fails_when_built():
    with pytest.raises(ValueError, match=r"`block_size`.*at most.*\(4, 4\).*block_size=\(5, 5\)"):
        DropBlock2D(0.1, 5)(keras.Input((4, 4, 8)))
    # channels_first read on a channels_last map: the channels become a spatial axis.
    with pytest.raises(ValueError, match=r"`block_size`.*channels_first"):
        DropBlock2D(0.1, 5, data_format="channels_first")(keras.Input((16, 16, 3)))
    with pytest.raises(ValueError, match=r"rank 4.*\(None, 8, 3\)"):
        DropBlock2D(0.1, 3)(keras.Input((8, 3)))


@pytest.mark.parametrize(
    "between", [[], [keras.layers.ReLU], [keras.layers.BatchNormalization, keras.layers.ReLU]]
)
def test_data_format_other_than_the_conv_before_it_fails_when_called(between):
    # 16x16x16 fits a block of 3 either way: only the conv's data_format tells.
    inputs = keras.Input((16, 16, 16))
    x = keras.layers.Conv2D(16, 3, padding="same", data_format="channels_last", name="conv")(inputs)
    for layer in between:
        x = layer()(x)
    with pytest.raises(
        ValueError,
        match=r"`data_format`.*'channels_last' \(from `conv`\).*data_format='channels_first'",
    ):
        DropBlock2D(0.1, 3, data_format="channels_first")(x)
    assert DropBlock2D(0.1, 3, data_format="channels_last")(x).shape == x.shape
