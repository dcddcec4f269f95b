import numpy as np
import pytest

import keras
from kreg.callbacks import OverfittingDetector
from kreg.callbacks import plot_training_curves
from kreg.callbacks.overfitting_detector import STATE_CODES
from scripted import fit_scripted
from scripted import tiny_model

FALLING = [2.0, 1.5, 1.2, 1.0, 0.85, 0.75, 0.68, 0.62, 0.58, 0.55, 0.52, 0.50]

# (train losses, validation losses, detector arguments, expected epoch the state
# is first reached, expected state then, expected onset epoch)
TABLE = [
    # Textbook overfitting: validation bottoms out at epoch 4 and rises.
    (FALLING, [2.1, 1.6, 1.3, 1.15, 1.1, 1.12, 1.18, 1.25, 1.33, 1.4, 1.5, 1.6],
     {"patience": 3, "smoothing": 0.0}, 7, "overfitting", 4),
    # The same with noise on the validation curve: smoothing absorbs the blip at
    # epoch 7 (the smoothed minimum lags to epoch 7, three rises end at 10), and
    # the onset is still the raw minimum.
    (FALLING, [2.1, 1.6, 1.35, 1.15, 1.12, 1.1, 1.16, 1.13, 1.22, 1.3, 1.36, 1.45],
     {"patience": 3, "smoothing": 0.5}, 10, "overfitting", 5),
    # Validation flat while training falls: the gap grows with no validation gain.
    (FALLING, [2.1, 1.6, 1.3, 1.1, 1.05, 1.05, 1.05, 1.05, 1.05, 1.05, 1.05, 1.05],
     {"patience": 3, "smoothing": 0.0, "min_gap": 0.2}, 7, "overfitting", 4),
    # Both curves stall high together: underfitting.
    ([2.0, 1.8, 1.7, 1.69, 1.69, 1.688, 1.688, 1.687, 1.687, 1.687],
     [2.0, 1.82, 1.72, 1.71, 1.70, 1.70, 1.70, 1.70, 1.70, 1.70],
     {"patience": 3, "smoothing": 0.0, "min_gap": 0.05}, 5, "underfitting", None),
    # Accuracy (mode="max"): validation accuracy peaks at epoch 3 and falls.
    ([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95], [0.5, 0.6, 0.68, 0.72, 0.7, 0.69, 0.67, 0.65],
     {"patience": 3, "smoothing": 0.0, "mode": "max", "monitor": "val_accuracy", "train_monitor": "accuracy"},
     6, "overfitting", 3),
]


def _detect(train, val, kwargs):
    detector = OverfittingDetector(action=lambda *_: None, **kwargs)
    states = [detector.update(epoch, t, v) for epoch, (t, v) in enumerate(zip(train, val))]
    return detector, states


@pytest.mark.parametrize("train, val, kwargs, first_epoch, state, onset", TABLE)
def test_scripted_curves(train, val, kwargs, first_epoch, state, onset):
    detector, states = _detect(train, val, kwargs)
    assert states.index(state) == first_epoch, states
    assert all(s == "learning" for s in states[:first_epoch])
    assert detector.onset_epoch == onset


def test_healthy_training_raises_no_alarm():
    val = [2.1, 1.6, 1.3, 1.12, 0.98, 0.9, 0.84, 0.8, 0.77, 0.75, 0.73, 0.72]
    detector, states = _detect(FALLING, val, {"patience": 2, "min_gap": 0.3})
    assert set(states) == {"learning"} and detector.onset_epoch is None


def test_in_fit_it_records_gap_and_state_and_acts(tmp_path):
    train = FALLING[:10]
    val = [2.1, 1.6, 1.3, 1.15, 1.1, 1.12, 1.18, 1.25, 1.33, 1.4]
    calls = []
    detector = OverfittingDetector(patience=3, smoothing=0.0, action=lambda d, epoch: calls.append(epoch))
    model = tiny_model()
    script = fit_scripted(model, detector, 10, loss=train, val_loss=val)
    history = model.history.history
    np.testing.assert_allclose(history["generalization_gap"], np.subtract(val, train), rtol=1e-6)
    assert history["overfitting_state"][:7] == [0.0] * 7
    assert history["overfitting_state"][7:] == [STATE_CODES["overfitting"]] * 3
    assert calls == [7], "the action runs once, when overfitting is first detected"
    assert detector.onset_epoch == 4
    del script


def test_stop_action_ends_training():
    detector = OverfittingDetector(patience=2, smoothing=0.0, action="stop")
    model = tiny_model()
    script = fit_scripted(model, detector, 8, loss=FALLING[:8], val_loss=[2, 1, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4])
    assert len(script.weights) == 5  # detected at epoch 4 (0-based), then stopped


def test_warn_action_warns_and_state_resets_between_fits():
    detector = OverfittingDetector(patience=2, smoothing=0.0)
    model = tiny_model()
    with pytest.warns(UserWarning, match="Overfitting detected at epoch 5.*since epoch 3"):
        fit_scripted(model, detector, 6, loss=FALLING[:6], val_loss=[2, 1, 0.9, 1.0, 1.1, 1.2])
    fit_scripted(model, detector, 3, loss=FALLING[:3], val_loss=[2, 1, 0.9])
    assert detector.state == "learning" and detector.onset_epoch is None


def test_missing_validation_metric_is_an_error():
    x = np.ones((8, 3), "float32")
    model = tiny_model()
    with pytest.raises(ValueError, match=r"`val_loss`.*Available: accuracy, loss\..*validation data"):
        model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[OverfittingDetector()])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patience": 0}, r"`patience`.*>= 1.*patience=0"),
        ({"smoothing": 1.0}, r"`smoothing`.*\[0, 1\)"),
        ({"min_gap": -1}, r"`min_gap`.*>= 0"),
        ({"mode": "up"}, r"`mode`.*'up'"),
        ({"action": "explode"}, r"`action`.*'warn', 'stop' or a callable.*'explode'"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OverfittingDetector(**kwargs)


def test_config_round_trip():
    detector = OverfittingDetector(patience=4, min_gap=0.1, action="stop")
    assert OverfittingDetector.from_config(detector.get_config()).get_config() == detector.get_config()
    assert keras.saving.get_registered_name(OverfittingDetector) == "kreg>OverfittingDetector"


def test_plot_marks_onset_and_best_epoch(tmp_path):
    history = {"loss": FALLING, "val_loss": [2.1, 1.6, 1.3, 1.15, 1.1, 1.12, 1.18, 1.25, 1.33, 1.4, 1.5, 1.6]}
    path = plot_training_curves(history, tmp_path / "plots" / "curves.png", onset_epoch=4, best_epoch=4)
    data = open(path, "rb").read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    with pytest.raises(ValueError, match=r"`metrics`.*val_accuracy.*Available"):
        plot_training_curves(history, tmp_path / "x.png", metrics=("val_accuracy",))
    log_path = plot_training_curves(history, tmp_path / "log.png", yscale="log")
    assert open(log_path, "rb").read() != data  # a different picture, same curves
    with pytest.raises(ValueError, match=r"`yscale`.*'symlog'"):
        plot_training_curves(history, tmp_path / "x.png", yscale="symlog")


def test_a_plateau_followed_by_a_new_best_is_forgotten():
    train = FALLING + [0.48, 0.46, 0.44]
    # Plateau and bump at epochs 4-7 (detected), then validation improves again.
    val = [2.1, 1.6, 1.3, 1.15, 1.1, 1.12, 1.18, 1.25, 1.05, 1.0, 0.98, 0.97, 0.96, 0.95, 0.94]
    calls = []
    detector = OverfittingDetector(patience=3, smoothing=0.0, action=lambda d, e: calls.append((e, d.onset_epoch)))
    states = [detector.update(epoch, t, v) for epoch, (t, v) in enumerate(zip(train, val))]
    assert states[7] == "overfitting" and calls == [] and states[8:] == ["learning"] * 7
    assert detector.onset_epoch is None


def test_withdrawn_detection_does_not_fire_again_at_the_new_best():
    train = [1.0 - 0.05 * epoch for epoch in range(12)]
    val = [1.0, 0.8, 0.7, 0.9, 1.0, 1.1, 0.69, 0.68, 0.67, 0.66, 0.65, 0.64]
    detector = OverfittingDetector(patience=3, smoothing=0.6, action=lambda *_: None)
    states = [detector.update(epoch, t, v) for epoch, (t, v) in enumerate(zip(train, val))]
    assert "overfitting" in states[:6]
    assert states[6:] == ["learning"] * 6 and detector.onset_epoch is None
