"""Keras's own BatchNormalization tests, run with AdaptiveBatchNormalization.

The drop-in claim checked by the checks Keras runs on its layer: the number of
weights (trainable, non-trainable, torch parameters, seed generators), training
and inference outputs, masking, renorm, serialization. The module is Keras's test
file shipped in the wheel (`keras/src/layers/normalization/batch_normalization_test.py`);
its `layers.BatchNormalization` is swapped for kreg's class while each test runs.
"""

import pytest

from kreg.layers import AdaptiveBatchNormalization

keras_tests = pytest.importorskip("keras.src.layers.normalization.batch_normalization_test")
pytest.importorskip("absl.testing.parameterized")


class _LayersWithAdaptiveBatchNormalization:
    """`keras.src.layers` with kreg's class in place of `BatchNormalization`."""

    def __init__(self, layers):
        self._layers = layers

    def __getattr__(self, name):
        if name == "BatchNormalization":
            return AdaptiveBatchNormalization
        return getattr(self._layers, name)


class TestKerasChecksOnAdaptiveBatchNormalization(keras_tests.BatchNormalizationTest):
    def setUp(self):
        super().setUp()
        original = keras_tests.layers
        keras_tests.layers = _LayersWithAdaptiveBatchNormalization(original)
        self.addCleanup(setattr, keras_tests, "layers", original)

    def test_the_swap_is_in_place(self):
        assert keras_tests.layers.BatchNormalization is AdaptiveBatchNormalization
        assert keras_tests.layers.Dense is not None
