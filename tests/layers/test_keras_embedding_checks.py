"""Keras's own Embedding tests, run with EmbeddingDropout.

The drop-in claim checked by the checks Keras runs on its layer: weights and
their counts, sparse and ragged inputs, masking, `weights=`, LoRA, int8 and int4
quantization (by `quantize`, by dtype policy, saved and loaded) and
serialization. The module is Keras's test file shipped in the wheel
(`keras/src/layers/core/embedding_test.py`); its `layers.Embedding` is swapped
for kreg's class while each test runs. Two expectations change, both for the
one piece of state the class adds on purpose: the `SeedGenerator` of its row
masks (one seed generator, not none) and, where Keras counts `layer.variables`,
that generator's state and the rate variable `call` reads (on torch,
`layer.torch_params` lists every variable).
"""

import pytest

from kreg.layers import EmbeddingDropout

keras_tests = pytest.importorskip("keras.src.layers.core.embedding_test")
pytest.importorskip("absl.testing.parameterized")

# `layer.variables` beyond Embedding's: the seed generator's state and the rate.
_EXTRA_VARIABLES = 2


def _counts_variables(container):
    """Whether `container` is a layer's `torch_params` (every variable, on torch)."""
    return type(container).__name__ == "ParameterDict"


class _LayersWithEmbeddingDropout:
    """`keras.src.layers` with kreg's class in place of `Embedding`."""

    def __init__(self, layers):
        self._layers = layers

    def __getattr__(self, name):
        if name == "Embedding":
            return EmbeddingDropout
        return getattr(self._layers, name)


class TestKerasChecksOnEmbeddingDropout(keras_tests.EmbeddingTest):
    def setUp(self):
        super().setUp()
        original = keras_tests.layers
        keras_tests.layers = _LayersWithEmbeddingDropout(original)
        self.addCleanup(setattr, keras_tests, "layers", original)

    def run_layer_test(self, layer_cls, *args, **kwargs):
        if layer_cls is EmbeddingDropout:
            kwargs["expected_num_seed_generators"] = 1
        return super().run_layer_test(layer_cls, *args, **kwargs)

    def assertLen(self, container, expected_len, msg=None):
        if msg == "Unexpected number of torch_params":
            # `run_layer_test` on torch: the seed generator is counted above,
            # the rate variable is not.
            expected_len += 1
        elif _counts_variables(container) or self._testMethodName.startswith(
            "test_quantize_by_setting_dtype_policy"  # counts `layer.variables`
        ):
            expected_len += _EXTRA_VARIABLES
        return super().assertLen(container, expected_len, msg)

    def test_the_swap_is_in_place(self):
        assert keras_tests.layers.Embedding is EmbeddingDropout
        assert keras_tests.layers.Dense is not None
