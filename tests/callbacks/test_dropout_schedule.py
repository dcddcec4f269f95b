"""DropoutSchedule: every adjustable rate follows the schedule, epoch by epoch."""

import keras
import numpy as np
import pytest

import kreg
from kreg.callbacks import DropoutSchedule
from kreg.callbacks.dropout_rates import adjustable_dropout_rates
from kreg.callbacks.dropout_rates import rates_built_at_zero
from kreg.callbacks.dropout_rates import update_dropout_rates


class _RateRecorder(keras.callbacks.Callback):
    """Records, at each epoch's first batch, the rates the training step reads."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.rates.append(
                {f"{layer.name}.{name}": float(keras.ops.convert_to_numpy(layer.rate_variable(name)))
                 for (layer, name) in adjustable_dropout_rates(self.model)}
            )  # fmt: skip


def _model():
    model = kreg.convert_dropouts(
        keras.Sequential(
            [
                keras.Input((5, 3)),
                kreg.ConsistentDropout(0.2, name="consistent"),
                keras.layers.Flatten(),
                keras.layers.Dropout(0.4, name="dropout"),
                keras.layers.Dropout(0.0, name="never"),
                keras.layers.Dense(1),
            ]
        )
    )
    model.compile("sgd", "mse")
    return model


def _fit(schedule, fit_epochs=4, **kwargs):
    model = _model()
    recorder = _RateRecorder()
    x = np.ones((8, 5, 3), "float32")
    model.fit(
        x,
        np.zeros((8, 1)),
        epochs=fit_epochs,
        verbose=0,
        callbacks=[DropoutSchedule(schedule, **kwargs), recorder],
    )
    return model, recorder.rates


@pytest.mark.parametrize(
    "schedule, multipliers",
    [("early", [1, 1, 0, 0]), ("late", [0, 0, 1, 1]), ("curriculum", [0, 0.9, 0.99, 0.999])],
)
def test_named_schedules_scale_every_rate_and_fit_restores_the_base(schedule, multipliers):
    model, rates = _fit(schedule, epochs=2)
    for epoch, multiplier in enumerate(multipliers):
        assert rates[epoch]["consistent.rate"] == pytest.approx(0.2 * multiplier, abs=1e-6), epoch
        assert rates[epoch]["dropout.rate"] == pytest.approx(0.4 * multiplier, abs=1e-6), epoch
    after_fit = {
        f"{layer.name}.{name}": rate
        for (layer, name), rate in adjustable_dropout_rates(model).items()
    }
    assert after_fit == {"consistent.rate": 0.2, "dropout.rate": 0.4}


def test_a_callable_schedule_and_a_resumed_fit_continue_by_epoch():
    model = _model()
    recorder = _RateRecorder()
    x = np.ones((8, 5, 3), "float32")
    schedule = DropoutSchedule(lambda epoch: 0.5 * epoch)
    model.fit(
        x, np.zeros((8, 1)), epochs=3, initial_epoch=1, verbose=0, callbacks=[schedule, recorder]
    )
    assert [rates["dropout.rate"] for rates in recorder.rates] == pytest.approx([0.2, 0.4])


def test_a_rate_the_schedule_pushes_out_of_range_is_an_error_naming_it():
    with pytest.raises(ValueError, match="rate"):
        _fit(lambda epoch: 3.0, fit_epochs=1)


def test_update_dropout_rates_is_the_public_mechanism():
    model = _model()
    changed = update_dropout_rates(model, lambda layer, name, rate: min(rate + 0.6, 0.9))
    assert changed == {"consistent.rate": 0.8, "dropout.rate": 0.9}


def test_rates_built_at_zero_are_named_and_never_updated():
    model = kreg.convert_dropouts(
        keras.Sequential(
            [
                keras.Input((5, 3)),
                kreg.ConsistentDropout(0.0, name="off"),
                kreg.ConsistentDropout(0.2, name="on"),
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )
    )
    assert rates_built_at_zero(model) == ["off.rate"]
    assert update_dropout_rates(model, lambda layer, name, rate: rate + 0.1) == {"on.rate": 0.3}
    assert model.get_layer("off").rate == 0.0


def test_a_model_without_adjustable_rates_is_told_how_to_convert(capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(
        np.ones((4, 3)), np.ones((4, 1)), verbose=0, callbacks=[DropoutSchedule("late", epochs=1)]
    )
    assert "kreg.convert_dropouts" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "sometimes", "epochs": 2}, "schedule"),
        ({"schedule": "early"}, "epochs"),
        ({"schedule": "late", "epochs": 0}, "epochs"),
        ({"schedule": lambda epoch: 1.0, "epochs": 3}, "epochs"),
        ({"schedule": "early", "epochs": 2, "verbose": -1}, "verbose"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DropoutSchedule(**kwargs)


def test_config_round_trip():
    schedule = DropoutSchedule("curriculum", epochs=5, verbose=1)
    assert DropoutSchedule(**schedule.get_config()).get_config() == schedule.get_config()


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_a_fit_stopped_by_an_error_does_not_make_the_scaled_rates_the_next_base():
    # `fit` skips `on_train_end` after an error: the next fit must not take the
    # rates the schedule left (0 for "early" past its epochs) as the base rates.
    model = _model()
    schedule = DropoutSchedule("early", epochs=2)
    x, y = np.ones((8, 5, 3), "float32"), np.zeros((8, 1))
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=4, verbose=0, callbacks=[schedule, _Interrupt()])
    recorder = _RateRecorder()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[schedule, recorder])
    assert recorder.rates[0]["dropout.rate"] == pytest.approx(0.4)
    after_fit = {
        f"{layer.name}.{name}": rate
        for (layer, name), rate in adjustable_dropout_rates(model).items()
    }
    assert after_fit == {"consistent.rate": 0.2, "dropout.rate": 0.4}
