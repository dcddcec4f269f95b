"""`recurrent_dropout` on an LSTM/GRU that would otherwise run the fused kernel."""

import keras

from kreg import _keras_compat
from kreg.layers import WeightDropGRU
from kreg.layers import WeightDropLSTM
from kreg.rules import _roles

ID = "recurrent-dropout-unfused"
SEVERITY = "warning"


def check(view):
    for node in view.calls:
        layer = _roles.unwrap(node.layer)
        if not isinstance(layer, (keras.layers.LSTM, keras.layers.GRU)):
            continue
        rate = layer.recurrent_dropout
        if not rate or not _keras_compat.fused_rnn_arguments_ok(layer):
            continue
        if isinstance(layer, (WeightDropLSTM, WeightDropGRU)):
            fix = f"recurrent_dropout=0 and weight_dropout={rate:g} on `{node.path}`"
        else:
            kreg_layer = (
                "WeightDropGRU" if isinstance(layer, keras.layers.GRU) else "WeightDropLSTM"
            )
            fix = (
                f"kreg.layers.{kreg_layer}(units, weight_dropout={rate:g}): one "
                "DropConnect mask on the recurrent kernel per batch, fused kernel kept"
            )
        yield (
            [node.path],
            f"`{node.path}` has recurrent_dropout={rate:g}, which turns off the fused "
            "(cuDNN) LSTM/GRU kernel: training runs the step-by-step loop, several "
            "times slower on GPU",
            fix,
        )
