"""Keras's own LSTM and GRU tests, run with WeightDropLSTM/GRU and ZoneoutLSTM/GRU.

The drop-in claim checked by the checks Keras runs on its layers: positional
arguments (`LSTM(3, "relu")`), weights, masking, states, `go_backwards`,
`stateful`, training with `dropout`, and serialization. The modules are Keras's
test files shipped in the wheel (`keras/src/layers/rnn/lstm_test.py`,
`gru_test.py`); their `layers.LSTM` / `layers.GRU` is swapped for kreg's class
while each test runs. Every rate stays at its default 0, where the layers claim
to compute exactly what Keras's do. One expectation changes: on torch, the
number of variables counts the rate variables `call` reads.
"""

import pytest

from kreg.layers import WeightDropGRU
from kreg.layers import WeightDropLSTM
from kreg.layers import ZoneoutGRU
from kreg.layers import ZoneoutLSTM

lstm_tests = pytest.importorskip("keras.src.layers.rnn.lstm_test")
gru_tests = pytest.importorskip("keras.src.layers.rnn.gru_test")


class _LayersWith:
    """`keras.src.layers` with `cls` in place of the Keras class `name`."""

    def __init__(self, layers, name, cls):
        self._layers, self._name, self._cls = layers, name, cls

    def __getattr__(self, name):
        return self._cls if name == self._name else getattr(self._layers, name)


def _swapped(test_case, module, name, cls, rates):
    class Swapped(test_case):
        def setUp(self):
            super().setUp()
            original = module.layers
            module.layers = _LayersWith(original, name, cls)
            self.addCleanup(setattr, module, "layers", original)

        def assertLen(self, container, expected_len, msg=None):
            if msg == "Unexpected number of torch_params":
                # On torch `run_layer_test` counts every variable, the rates too.
                expected_len += rates
            return super().assertLen(container, expected_len, msg)

        def test_the_swap_is_in_place(self):
            assert getattr(module.layers, name) is cls

    Swapped.__name__ = Swapped.__qualname__ = f"TestKerasChecksOn{cls.__name__}"
    return Swapped


TestKerasChecksOnWeightDropLSTM = _swapped(
    lstm_tests.LSTMTest, lstm_tests, "LSTM", WeightDropLSTM, 1
)
TestKerasChecksOnZoneoutLSTM = _swapped(lstm_tests.LSTMTest, lstm_tests, "LSTM", ZoneoutLSTM, 2)
TestKerasChecksOnWeightDropGRU = _swapped(gru_tests.GRUTest, gru_tests, "GRU", WeightDropGRU, 1)
TestKerasChecksOnZoneoutGRU = _swapped(gru_tests.GRUTest, gru_tests, "GRU", ZoneoutGRU, 1)
