"""One small working example of every public kreg layer: THE table to extend.

Adding a layer to `kreg.layers.__all__`? Add a row here. Every test that must
cover every layer reads this table (tests/layers/test_model_apis.py, the
multi-device tests in tests/distributed/), and tests/layers/test_model_apis.py
fails, naming the layer, when `kreg.layers.__all__` has a name without a row.
"""

import dataclasses
from typing import Callable

import keras
import numpy as np

import kreg


@dataclasses.dataclass(frozen=True)
class LayerExample:
    """A kreg layer in the smallest stack where it does its job.

    Attributes:
        input_shape: Shape of one sample (no batch axis).
        stack: Returns fresh layers, the kreg layer among them; a model puts
            them between its input and a `Flatten` + `Dense(1)` head.
        vocabulary: For integer inputs (token ids), the number of ids; `None`
            for float inputs.
    """

    input_shape: tuple
    stack: Callable[[], list]
    vocabulary: int = None

    def inputs(self, batch_size, seed=0):
        """A batch of inputs the stack accepts."""
        rng = np.random.default_rng(seed)
        shape = (batch_size, *self.input_shape)
        if self.vocabulary is not None:
            return rng.integers(0, self.vocabulary, size=shape).astype("int32")
        return rng.standard_normal(shape).astype("float32")

    def model(self, seed=None):
        """A functional model: input, the stack, `Flatten`, `Dense(1)`."""
        inputs = keras.Input(self.input_shape, dtype="int32" if self.vocabulary else "float32")
        x = inputs
        for layer in self.stack():
            x = layer(x)
        x = keras.layers.Flatten()(x)
        return keras.Model(inputs, keras.layers.Dense(1)(x))


@keras.saving.register_keras_serializable(package="kreg_tests")
class ResidualBlock(keras.layers.Layer):
    """`StochasticDepth([x, conv(x)])`: the smallest stack for a layer that adds a
    branch to its shortcut (a stack layer takes one tensor)."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(3, 3, padding="same")
        self.add = kreg.StochasticDepth(rate, seed=8)

    def call(self, x, training=False):
        return self.add([x, self.conv(x)], training=training)


EXAMPLES = {
    "ActivationRegularization": LayerExample(
        (5, 3),
        lambda: [
            keras.layers.LSTM(4, return_sequences=True),
            kreg.ActivationRegularization(ar=2.0, tar=1.0),
        ],
    ),
    "AdaptiveBatchNormalization": LayerExample(
        (4, 4, 3),
        lambda: [keras.layers.Conv2D(4, 3, use_bias=False), kreg.AdaptiveBatchNormalization()],
    ),
    "AdjustableDropout": LayerExample(
        (6, 6, 2),
        lambda: [
            keras.layers.Conv2D(3, 3),
            kreg.AdjustableDropout(0.3, noise_shape=(None, 1, 1, None), seed=1),
        ],
    ),
    "ConsistentDropout": LayerExample(
        (5, 3), lambda: [kreg.ConsistentDropout(0.3, seed=1), keras.layers.LSTM(4)]
    ),
    "ConsistentDropoutCell": LayerExample(
        (5, 3),
        lambda: [
            keras.layers.RNN(
                kreg.ConsistentDropoutCell(
                    keras.layers.SimpleRNNCell(4), dropout=0.3, recurrent_dropout=0.3, seed=2
                )
            )
        ],
    ),
    "Conv1DBatchNorm": LayerExample(
        (8, 3), lambda: [kreg.Conv1DBatchNorm(4, 3, activation="relu")]
    ),
    "Conv2DBatchNorm": LayerExample(
        (6, 6, 3), lambda: [kreg.Conv2DBatchNorm(4, 3, activation="relu")]
    ),
    "Conv3DBatchNorm": LayerExample(
        (4, 4, 4, 2), lambda: [kreg.Conv3DBatchNorm(3, 2, activation="relu")]
    ),
    "DenseBatchNorm": LayerExample((6,), lambda: [kreg.DenseBatchNorm(4, activation="relu")]),
    "DepthwiseConv2DBatchNorm": LayerExample(
        (6, 6, 3), lambda: [kreg.DepthwiseConv2DBatchNorm(3, activation="relu")]
    ),
    "DropBlock1D": LayerExample(
        (8, 3), lambda: [keras.layers.Conv1D(4, 3), kreg.DropBlock1D(0.2, 3, seed=9)]
    ),
    "DropBlock2D": LayerExample(
        (8, 8, 3), lambda: [keras.layers.Conv2D(4, 3), kreg.DropBlock2D(0.2, 3, seed=10)]
    ),
    "DropBlock3D": LayerExample(
        (4, 4, 4, 2), lambda: [kreg.DropBlock3D(0.2, 2, seed=11), keras.layers.Conv3D(3, 2)]
    ),
    "EmbeddingDropout": LayerExample(
        (6,),
        lambda: [
            kreg.EmbeddingDropout(10, 4, rate=0.2, mask_zero=True, seed=5),
            keras.layers.LSTM(3),
        ],
        vocabulary=10,
    ),
    "StochasticDepth": LayerExample((6, 6, 3), lambda: [ResidualBlock(0.3)]),
    "WeightDropGRU": LayerExample(
        (5, 3), lambda: [kreg.WeightDropGRU(4, weight_dropout=0.3, seed=3)]
    ),
    "WeightDropLSTM": LayerExample(
        (5, 3), lambda: [kreg.WeightDropLSTM(4, weight_dropout=0.3, seed=4)]
    ),
    "WeightNormalization": LayerExample(
        (6, 6, 3),
        lambda: [
            kreg.WeightNormalization(keras.layers.Conv2D(4, 3, activation="relu"), data_init=True)
        ],
    ),
    "ZoneoutGRU": LayerExample((5, 3), lambda: [kreg.ZoneoutGRU(4, hidden_zoneout=0.2, seed=6)]),
    "ZoneoutLSTM": LayerExample(
        (5, 3), lambda: [kreg.ZoneoutLSTM(4, cell_zoneout=0.3, hidden_zoneout=0.1, seed=7)]
    ),
}


def missing_examples():
    """Names in `kreg.layers.__all__` that have no row in `EXAMPLES`."""
    return sorted(set(kreg.layers.__all__) - set(EXAMPLES))
