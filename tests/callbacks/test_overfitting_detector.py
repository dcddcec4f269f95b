import warnings

import keras
import numpy as np
import pytest
from scripted import fit_scripted
from scripted import tiny_data
from scripted import tiny_model

from kreg.callbacks import OverfittingDetector
from kreg.callbacks import plot_training_curves
from kreg.callbacks.overfitting_criteria import CRITERIA
from kreg.callbacks.overfitting_criteria import NOISE_FLOOR
from kreg.callbacks.overfitting_criteria import accuracy_noise
from kreg.callbacks.overfitting_criteria import curve_noise
from kreg.callbacks.overfitting_detector import STATE_CODES
from kreg.layers import ConsistentDropout

ACCURACY = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99]
VAL_ACCURACY = [0.5, 0.6, 0.68, 0.72, 0.7, 0.69, 0.67, 0.65, 0.64, 0.62, 0.61, 0.6]
FALLING = [2.0, 1.5, 1.2, 1.0, 0.85, 0.75, 0.68, 0.62, 0.58, 0.55, 0.52, 0.50]
U_SHAPE = [2.1, 1.6, 1.3, 1.15, 1.1, 1.12, 1.18, 1.25, 1.33, 1.4, 1.5, 1.6]
# A U whose bottom wiggles: minimum 1.1 at epoch 5, noise 0.046.
NOISY_BOTTOM = [2.1, 1.6, 1.35, 1.15, 1.12, 1.1, 1.16, 1.13, 1.22, 1.3, 1.36, 1.45]
ON_ACCURACY = {
    "monitor": "val_accuracy",
    "train_monitor": "accuracy",
    "mode": "max",
    "train_mode": "max",
}

# (train values, validation values, detector arguments, epoch the state is
# first reached, that state, onset epoch)
TABLE = [
    # Textbook overfitting: validation bottoms out at epoch 4 and rises. The
    # noise needs 7 epochs (3 residuals); the curve is smooth (a parabola has
    # no residual), so its noise is small (0.0035) and at epoch 6, the first
    # judged, the last two epochs (1.12, 1.18) lie above the best by more than
    # 1.5 times it. Before, 1.12 is under 2% above 1.1: no warm-up alarm.
    (FALLING, U_SHAPE, {"patience": 3}, 6, "overfitting", 4),
    # The same with a noisy bottom: the noise (0.046, from the wiggles) widens
    # the band, so 1.16, 1.13 at epochs 6-7 are no overfitting: first
    # saturated at 7 (no gain beyond the noise for 3 epochs), then
    # overfitting at 9 (1.22, 1.3 lie above 1.1 + 1.5 * 0.046); the onset is
    # the raw minimum (5).
    (FALLING, NOISY_BOTTOM, {"patience": 3}, 7, "saturated", 5),
    (FALLING, NOISY_BOTTOM, {"patience": 3}, 9, "overfitting", 5),
    # Memorization plateau: validation flat within its noise while training
    # keeps falling is saturated, not overfitting.
    (
        FALLING,
        [2.1, 1.6, 1.3, 1.1, 1.05, 1.06, 1.04, 1.05, 1.06, 1.04, 1.05, 1.06],
        {"patience": 3},
        7,
        "saturated",
        6,
    ),
    # Both curves stall together, the training loss at 84% of its first value: underfitting.
    (
        [2.0, 1.8, 1.7, 1.69, 1.69, 1.688, 1.688, 1.687, 1.687, 1.687],
        [2.0, 1.82, 1.72, 1.71, 1.70, 1.70, 1.70, 1.70, 1.70, 1.70],
        {"patience": 3},
        7,
        "underfitting",
        None,
    ),
    # Accuracy (maximized): validation accuracy peaks at epoch 3 and falls.
    (
        ACCURACY,
        VAL_ACCURACY,
        {
            "patience": 3,
            "monitor": "val_accuracy",
            "train_monitor": "accuracy",
            "mode": "max",
            "train_mode": "max",
        },
        6,
        "overfitting",
        3,
    ),
    # Prechelt's GL5 on the smoothed curve (factor 0.3): 5% above its best at epoch 7.
    (FALLING, U_SHAPE, {"criterion": "gl"}, 7, "overfitting", 4),
    # UP with strips of 2 epochs (raw curves): the strips ending at epochs 5,
    # 7 and 9 end at 1.12, 1.25, 1.4: two successive rises, seen at epoch 9.
    (FALLING, U_SHAPE, {"criterion": "up", "patience": 2, "smoothing": 0.0}, 9, "overfitting", 4),
]


def _detect(train, val, kwargs):
    detector = OverfittingDetector(action=lambda *_: None, **kwargs)
    states = [detector.update(epoch, t, v) for epoch, (t, v) in enumerate(zip(train, val))]
    return detector, states


@pytest.mark.parametrize("train, val, kwargs, first_epoch, state, onset", TABLE)
def test_scripted_curves(train, val, kwargs, first_epoch, state, onset):
    detector, states = _detect(train, val, kwargs)
    assert states.index(state) == first_epoch, states
    assert "overfitting" not in states[:first_epoch]
    assert detector.onset_epoch == onset


@pytest.mark.parametrize("criterion", CRITERIA)
def test_healthy_and_slowly_improving_training_raise_no_alarm(criterion):
    val = [2.1, 1.6, 1.3, 1.12, 0.98, 0.9, 0.84, 0.8, 0.77, 0.75, 0.73, 0.72]
    for curve in (val, [1.0 - 0.004 * epoch + 0.001 * (-1) ** epoch for epoch in range(30)]):
        train = [v - 0.1 - 0.001 * epoch for epoch, v in enumerate(curve)]
        detector, states = _detect(train, curve, {"patience": 3, "criterion": criterion})
        assert "overfitting" not in states and detector.onset_epoch is None, states


def test_each_monitor_keeps_its_own_direction():
    # Accuracy rises, loss falls, both healthy: no state but learning (an
    # accuracy's "max" applied to the loss would read it as getting worse).
    train_loss = [2.0 * 0.8**epoch for epoch in range(12)]
    val_accuracy = [0.5 + 0.04 * epoch for epoch in range(12)]
    detector, states = _detect(
        train_loss, val_accuracy, {"monitor": "val_accuracy", "mode": "max", "patience": 3}
    )
    assert set(states) == {"learning"}
    assert OverfittingDetector(train_monitor="accuracy", monitor="val_loss").train_mode == "auto"


def test_auto_mode_without_a_model_knows_only_a_loss():
    # A loss is minimized; any other name needs the model's metric or a mode,
    # as in Keras's callbacks (no guess from the name).
    loss_only = OverfittingDetector(action=lambda *_: None)
    assert loss_only.update(0, 1.0, 1.0) == "learning"
    accuracy = OverfittingDetector(monitor="val_accuracy", action=lambda *_: None)
    with pytest.raises(ValueError, match=r"`mode`.*`val_accuracy`.*mode='min' or mode='max'"):
        accuracy.update(0, 1.0, 0.5)


def test_gl_on_an_accuracy_the_model_declares_maximized_is_an_error_at_the_first_epoch():
    detector = OverfittingDetector(criterion="gl", monitor="val_accuracy", train_monitor="accuracy")
    with pytest.raises(ValueError, match=r"`criterion`.*'gl'.*maximized"):
        fit_scripted(
            tiny_model(),
            detector,
            2,
            loss=[1.0, 0.9],
            val_loss=[1.0, 0.9],
            accuracy=[0.5, 0.6],
            val_accuracy=[0.5, 0.6],
        )


def test_auto_mode_reads_the_direction_the_compiled_metric_declares():
    # Cosine similarity is maximized, yet its name says so to no word list;
    # Keras's own callbacks read the metric's declared direction. Both curves
    # rise in step (healthy): read as minimized, they would look stalled.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse", metrics=[keras.metrics.CosineSimilarity()])
    rising = [0.3 + 0.05 * epoch for epoch in range(12)]
    detector = OverfittingDetector(
        monitor="val_cosine_similarity",
        train_monitor="cosine_similarity",
        patience=3,
        action=lambda *_: None,
    )
    fit_scripted(
        model,
        detector,
        12,
        cosine_similarity=[r + 0.02 for r in rising],
        val_cosine_similarity=rising,
    )
    assert set(detector.states) == {"learning"}, detector.states


def test_epochs_that_validation_freq_skips_are_not_read():
    x, y = tiny_data()
    detector = OverfittingDetector(patience=2, action=lambda *_: None)
    history = (
        tiny_model()
        .fit(
            x,
            y,
            validation_data=(x, y),
            validation_freq=2,
            epochs=6,
            verbose=0,
            callbacks=[detector],
        )
        .history
    )
    assert len(detector.states) == 3 and detector._epochs == [1, 3, 5]
    assert len(history["generalization_gap"]) == 3


def test_in_fit_it_records_gap_and_state_and_acts_once():
    train, val = FALLING, NOISY_BOTTOM
    calls = []
    detector = OverfittingDetector(
        patience=3, smoothing=0.0, action=lambda d, epoch: calls.append((epoch, d.onset_epoch))
    )
    model = tiny_model()
    fit_scripted(model, detector, 12, loss=train, val_loss=val)
    history = model.history.history
    np.testing.assert_allclose(history["generalization_gap"], np.subtract(val, train), rtol=1e-6)
    # The wiggles at epochs 6-8 are within the noise (saturated from 7), the
    # rise at 9 beyond it (overfitting).
    assert (
        history["overfitting_state"]
        == [0.0] * 7 + [STATE_CODES["saturated"]] * 2 + [STATE_CODES["overfitting"]] * 3
    )
    assert calls == [(7, 5), (9, 5)], "the action runs once per state, when it is first reached"


def test_a_withdrawn_detection_acts_again_at_the_next_onset():
    train = [2.0 * 0.9**epoch for epoch in range(26)]
    # A bump at epochs 4-8 (overfitting at 6), a real recovery (withdrawn at 9,
    # once 1.0 beats 1.1 by more than the noise) and a second rise from the
    # minimum at 16 (overfitting at 18).
    val = [
        2.1,
        1.6,
        1.3,
        1.15,
        1.1,
        1.12,
        1.18,
        1.25,
        1.3,
        1.0,
        0.8,
        0.7,
        0.65,
        0.6,
        0.58,
        0.57,
        0.56,
        0.6,
        0.65,
        0.7,
        0.75,
        0.8,
        0.85,
        0.9,
        0.95,
        1.0,
    ]
    calls = []
    detector = OverfittingDetector(
        patience=3, action=lambda d, epoch: calls.append((epoch, d.state, d.onset_epoch))
    )
    fit_scripted(tiny_model(), detector, len(val), loss=train, val_loss=val)
    assert calls == [(6, "overfitting", 4), (18, "overfitting", 16)]
    assert detector.states[9:18] == ["learning"] * 9


def test_stop_action_ends_training(capsys):
    detector = OverfittingDetector(patience=3, action="stop")
    script = fit_scripted(tiny_model(), detector, 12, loss=FALLING, val_loss=U_SHAPE)
    assert len(script.weights) == 7  # detected at epoch 6 (0-based), then stopped
    assert "Stopping training" in capsys.readouterr().out
    quiet = OverfittingDetector(patience=3, action="stop", verbose=0)
    fit_scripted(tiny_model(), quiet, 12, loss=FALLING, val_loss=U_SHAPE)
    assert capsys.readouterr().out == ""


def test_rollback_restores_the_onset_weights_and_stops():
    detector = OverfittingDetector(patience=3, smoothing=0.0, action="rollback", verbose=0)
    model = tiny_model()
    script = fit_scripted(model, detector, 12, loss=FALLING, val_loss=U_SHAPE)
    assert len(script.weights) == 7 and detector.onset_epoch == 4  # detected at 6
    for restored, expected in zip(model.get_weights(), script.weights[4]):
        np.testing.assert_array_equal(restored, expected)


def _fit_sequence_model(rate, name, detector):
    """12 scripted epochs (FALLING / U_SHAPE) of a model with one
    `ConsistentDropout(rate, name=name)`; returns the model and the script."""
    from scripted import ScriptedMetrics

    inputs = keras.Input((4, 3))
    x = ConsistentDropout(rate, name=name)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x_data = np.ones((16, 4, 3), "float32")
    script = ScriptedMetrics(loss=FALLING, val_loss=U_SHAPE)
    model.fit(
        x_data,
        x_data[:, 0, :1],
        validation_data=(x_data, x_data[:, 0, :1]),
        epochs=12,
        verbose=0,
        callbacks=[script, detector],
    )
    return model, script


def test_strengthen_raises_every_adjustable_dropout_rate_and_training_goes_on():
    detector = OverfittingDetector(
        patience=3, smoothing=0.0, action="strengthen", strengthen_step=0.15, verbose=0
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model, script = _fit_sequence_model(0.2, "locked", detector)
    assert len(script.weights) == 12  # not stopped
    # Fewer than 7 epochs after the change: no noise at the end, but the run was judged.
    assert not [w for w in record if "judged nothing" in str(w.message)]
    # Raised at epoch 6 (overfitting); the window restarts at the change, so
    # its noise needs 7 epochs again, but validation still rises: 2 epochs on,
    # it is more than 2% above the window's best at 2 epochs in a row (the
    # warm-up GL), overfitting again, and the rate rises again (8, 10).
    overfitting, learning = STATE_CODES["overfitting"], STATE_CODES["learning"]
    assert history_states(model)[6:] == [overfitting, learning] * 3
    assert model.get_layer("locked").rate == pytest.approx(0.2 + 3 * 0.15)


def test_strengthen_names_rate_zero_layers_once(capsys):
    detector = OverfittingDetector(patience=3, action="strengthen")
    with pytest.warns(UserWarning, match=r"built at 0 cannot be raised: off\.rate") as record:
        model, _ = _fit_sequence_model(0.0, "off", detector)
    assert len([w for w in record if "cannot be raised" in str(w.message)]) == 1
    assert model.get_layer("off").rate == 0.0
    # Nothing changed, so the curves still speak for the same model: the state
    # stays overfitting from its onset (not reset to learning) and the
    # detection is printed once, not at every later epoch.
    overfitting = STATE_CODES["overfitting"]
    assert history_states(model)[6:] == [overfitting] * 6
    assert capsys.readouterr().out.count("Dropout rates now: none changed") == 1


def test_strengthen_with_every_rate_at_its_ceiling_acts_once(capsys):
    # A rate already at the 0.9 ceiling is adjustable but cannot rise: nothing
    # changes, so, as with rate-0 layers, the state is acted on once and kept,
    # not reset to learning to be detected (and printed) again two epochs on.
    detector = OverfittingDetector(patience=3, smoothing=0.0, action="strengthen")
    with pytest.warns(UserWarning, match=r"at its ceiling \(0\.9\): top\.rate") as record:
        model, _ = _fit_sequence_model(0.9, "top", detector)
    assert len([w for w in record if "ceiling" in str(w.message)]) == 1
    assert model.get_layer("top").rate == pytest.approx(0.9)
    overfitting = STATE_CODES["overfitting"]
    assert history_states(model)[6:] == [overfitting] * 6
    assert capsys.readouterr().out.count("Dropout rates now: none changed") == 1


def test_nan_and_inf_epochs_are_skipped_with_a_warning_and_detection_goes_on():
    val = U_SHAPE[:5] + [float("nan")] + U_SHAPE[5:7] + [float("inf")] + U_SHAPE[7:]
    train = FALLING[:5] + [float("nan")] + FALLING[5:7] + [0.6] + FALLING[7:]
    detector = OverfittingDetector(patience=3, action=lambda *_: None)
    with pytest.warns(
        UserWarning,
        match=r"epoch 6 logged loss=nan, val_loss=nan; a NaN or infinite epoch is skipped",
    ):
        states = [detector.update(epoch, t, v) for epoch, (t, v) in enumerate(zip(train, val))]
    assert detector.skipped_epochs == [5, 8]
    # The epochs of U_SHAPE shift by one after the NaN: detected at its epoch
    # 6 (here 7).
    assert states.index("overfitting") == 7 and detector.onset_epoch == 4
    # A skipped epoch keeps the state it found.
    assert states[5] == states[4] == "learning" and states[8] == states[7] == "overfitting"


def test_a_nan_epoch_in_fit_is_skipped_and_rollback_still_restores_the_onset_exactly():
    nan = float("nan")
    detector = OverfittingDetector(patience=3, smoothing=0.0, action="rollback", verbose=0)
    model = tiny_model()
    with pytest.warns(UserWarning, match=r"epoch 6 logged loss=nan, val_loss=nan"):
        script = fit_scripted(
            model, detector, 13, loss=FALLING[:5] + [nan] + FALLING[5:],
            val_loss=U_SHAPE[:5] + [nan] + U_SHAPE[5:],
        )  # fmt: skip
    # Detection goes on past the NaN: U_SHAPE's epoch 6, one later.
    assert detector.skipped_epochs == [5] and len(script.weights) == 8
    assert detector.onset_epoch == 4 and model.history.history["overfitting_state"][5] == 0.0
    for restored, expected in zip(model.get_weights(), script.weights[4]):
        np.testing.assert_array_equal(restored, expected)


def test_saturated_plateau_is_logged_and_acted_on_only_where_asked():
    plateau = [2.1, 1.6, 1.3, 1.1, 1.05, 1.06, 1.04, 1.05, 1.06, 1.04, 1.05, 1.06]
    calls = []
    stop = OverfittingDetector(patience=3, action="stop", verbose=0)
    model = tiny_model()
    fit_scripted(model, stop, 12, loss=FALLING, val_loss=plateau)
    assert (
        history_states(model)[7:] == [STATE_CODES["saturated"]] * 5
    )  # "stop" acts on overfitting only
    asked = OverfittingDetector(
        patience=3,
        action=lambda d, epoch: calls.append((epoch, d.state, d.onset_epoch)),
        act_on="saturated",
    )
    fit_scripted(tiny_model(), asked, 12, loss=FALLING, val_loss=plateau)
    assert calls == [(7, "saturated", 6)]


def test_rollback_on_saturation_restores_the_best_epoch_exactly():
    plateau = [2.1, 1.6, 1.3, 1.1, 1.05, 1.06, 1.04, 1.05, 1.06, 1.04, 1.05, 1.06]
    detector = OverfittingDetector(
        patience=3, action="rollback", act_on=("overfitting", "saturated"), verbose=0
    )
    model = tiny_model()
    script = fit_scripted(model, detector, 12, loss=FALLING, val_loss=plateau)
    assert len(script.weights) == 8 and detector.onset_epoch == 6
    for restored, expected in zip(model.get_weights(), script.weights[6]):
        np.testing.assert_array_equal(restored, expected)


def history_states(model):
    return model.history.history["overfitting_state"]


def test_warn_action_warns_and_state_resets_between_fits():
    detector = OverfittingDetector(patience=3)
    model = tiny_model()
    with pytest.warns(
        UserWarning,
        match=r"Overfitting detected at epoch 7: val_loss is worse than its best \(epoch 5\)",
    ):
        fit_scripted(model, detector, 10, loss=FALLING[:10], val_loss=U_SHAPE[:10])
    with pytest.warns(UserWarning) as record:
        fit_scripted(model, detector, 3, loss=FALLING[:3], val_loss=[2, 1, 0.9])
    # The only warning of the second fit is that 3 epochs are too few to judge.
    assert [
        str(w.message)
        for w in record
        if "OverfittingDetector" in str(w.message) or "detected" in str(w.message)
    ] == [
        "OverfittingDetector judged nothing: 3 finite validated epochs, and its noise estimate needs 7. "
        "Train longer to get a state other than learning."
    ]
    assert detector.state == "learning" and detector.onset_epoch is None


def test_a_vector_valued_monitor_counts_by_its_mean():
    detector = OverfittingDetector(
        monitor="val_f1_score",
        train_monitor="f1_score",
        mode="max",
        train_mode="max",
        patience=3,
        smoothing=0.0,
        action=lambda *_: None,
    )
    states = [
        detector.update(epoch, np.array([t, t]), np.array([v, v + 0.02]))
        for epoch, (t, v) in enumerate(zip(ACCURACY, VAL_ACCURACY))
    ]
    assert states.index("overfitting") == 6 and detector.onset_epoch == 3


def test_missing_validation_metric_is_an_error():
    x = np.ones((8, 3), "float32")
    with pytest.raises(
        ValueError,
        match=r"argument `monitor`.*`val_loss`.*Available: accuracy, loss\..*validation data"
        r".*Received: monitor='val_loss'",
    ):
        tiny_model().fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[OverfittingDetector()])


def test_a_fit_shorter_than_its_validation_freq_is_an_error_saying_so():
    x, y = tiny_data()
    with pytest.raises(ValueError, match=r"argument `monitor`.*`val_loss`.*`validation_freq`"):
        tiny_model().fit(
            x, y, validation_data=(x, y), validation_freq=5, epochs=3, verbose=0,
            callbacks=[OverfittingDetector()],
        )  # fmt: skip


def test_a_misspelt_train_monitor_is_an_error_naming_its_argument():
    detector = OverfittingDetector(train_monitor="acc")
    with pytest.raises(
        ValueError, match=r"argument `train_monitor`.*`acc`.*Received: train_monitor='acc'"
    ):
        fit_scripted(tiny_model(), detector, 2, loss=FALLING[:2], val_loss=U_SHAPE[:2])


def _warnings_of(fit):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit()
    return [str(w.message) for w in record if "OverfittingDetector" in str(w.message)]


def test_a_run_that_ends_diverged_is_reported_as_diverged():
    nan = float("nan")
    # Finite for 8 epochs (the detector judged them), NaN from epoch 9 on.
    detector = OverfittingDetector(patience=3, action=lambda *_: None)
    messages = _warnings_of(
        lambda: fit_scripted(
            tiny_model(), detector, 11, loss=FALLING[:8] + [nan] * 3,
            val_loss=U_SHAPE[:8] + [nan] * 3,
        )
    )  # fmt: skip
    assert detector.skipped_epochs == [8, 9, 10]
    assert [m for m in messages if "diverged" in m][-1].startswith(
        "OverfittingDetector: the run ended diverged: its last 3 validated epochs (9-11) "
        "logged NaN or infinite values; its state (overfitting) is that of epoch 8"
    )
    # NaN from the first epoch: no advice to train longer.
    everything = OverfittingDetector(patience=3)
    messages = _warnings_of(
        lambda: fit_scripted(tiny_model(), everything, 8, loss=[nan] * 8, val_loss=[nan] * 8)
    )
    assert not [m for m in messages if "judged nothing" in m]
    assert [m for m in messages if "ended diverged" in m] == [
        "OverfittingDetector: the run ended diverged: its last 8 validated epochs (1-8) "
        "logged NaN or infinite values; no validated epoch was finite, so nothing was judged."
    ]
    # A NaN epoch the run recovers from is only skipped.
    recovered = OverfittingDetector(patience=3, action=lambda *_: None)
    messages = _warnings_of(
        lambda: fit_scripted(
            tiny_model(), recovered, 12, loss=FALLING[:5] + [nan] + FALLING[6:],
            val_loss=U_SHAPE[:5] + [nan] + U_SHAPE[6:],
        )
    )  # fmt: skip
    assert not [m for m in messages if "ended diverged" in m]


def test_a_run_not_longer_than_patience_says_saturation_and_underfitting_were_not_judged():
    plateau = [2.1, 1.6, 1.3, 1.1, 1.05, 1.06, 1.04, 1.05, 1.06, 1.04]
    for criterion in CRITERIA:
        # 10 validated epochs: the noise exists, but a plateau needs more than 20.
        detector = OverfittingDetector(patience=20, criterion=criterion)
        messages = _warnings_of(
            lambda: fit_scripted(tiny_model(), detector, 10, loss=FALLING[:10], val_loss=plateau)
        )
        assert set(detector.states) == {"learning"}
        assert messages == [
            "OverfittingDetector: 10 finite validated epochs, not more than patience=20: "
            "saturation and underfitting were not judged. Train longer or lower `patience`."
        ], criterion
    # Longer than patience: saturated, and no such warning.
    detector = OverfittingDetector(patience=3, action=lambda *_: None)
    messages = _warnings_of(
        lambda: fit_scripted(tiny_model(), detector, 10, loss=FALLING[:10], val_loss=plateau)
    )
    assert "saturated" in detector.states and messages == []


def test_patience_counts_validated_epochs_under_validation_freq():
    # Validation every 2nd epoch: 14 epochs are 7 validated epochs (enough for
    # the noise), not more than patience=7, so no saturation can be judged.
    x, y = tiny_data()
    detector = OverfittingDetector(patience=7, action=lambda *_: None)
    messages = _warnings_of(
        lambda: tiny_model().fit(
            x, y, validation_data=(x, y), validation_freq=2, epochs=14, verbose=0,
            callbacks=[detector],
        )
    )  # fmt: skip
    assert len(detector.states) == 7
    assert [m for m in messages if "patience" in m] == [
        "OverfittingDetector: 7 finite validated epochs, not more than patience=7: "
        "saturation and underfitting were not judged. Train longer or lower `patience`."
    ]


def test_a_start_from_epoch_past_the_run_says_it_read_no_epoch():
    detector = OverfittingDetector(start_from_epoch=10)
    messages = _warnings_of(
        lambda: fit_scripted(tiny_model(), detector, 5, loss=FALLING[:5], val_loss=U_SHAPE[:5])
    )
    assert detector.states == []
    assert messages == [
        "OverfittingDetector read no epoch: start_from_epoch=10, and this fit ended after "
        "epoch 5. Lower `start_from_epoch` or train longer."
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patience": 0}, r"`patience`.*>= 1.*patience=0"),
        ({"smoothing": 1.0}, r"`smoothing`.*\[0, 1\)"),
        ({"min_gap": -1}, r"`min_gap`.*>= 0"),
        ({"mode": "up"}, r"`mode`.*'up'"),
        ({"train_mode": "down"}, r"`train_mode`.*'down'"),
        ({"criterion": "prechelt"}, r"`criterion`.*'noise'.*'prechelt'"),
        ({"act_on": ("overfitting", "learning")}, r"`act_on`.*'saturated'.*'learning'"),
        ({"underfit_level": -0.5}, r"`underfit_level`.*>= 0"),
        ({"threshold": 0}, r"`threshold`.*> 0"),
        ({"threshold": "5"}, r"`threshold`.*'5'"),
        ({"verbose": 2}, r"`verbose`.*0 or 1"),
        ({"validation_samples": 0}, r"`validation_samples`.*>= 1.*validation_samples=0"),
        ({"validation_samples": 10.5}, r"`validation_samples`.*integer"),
        ({"monitor": None}, r"`monitor`.*None"),
        ({"action": "explode"}, r"`action`.*'warn'.*'rollback'.*'strengthen'.*callable.*'explode'"),
        (
            {"criterion": "gl", "monitor": "val_accuracy", "mode": "max"},
            r"`criterion`.*'gl'.*maximized",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OverfittingDetector(**kwargs)


def test_a_mode_against_the_declared_direction_is_an_error():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse", metrics=[keras.metrics.CosineSimilarity()])
    detector = OverfittingDetector(
        monitor="val_cosine_similarity", train_monitor="cosine_similarity", mode="min"
    )
    with pytest.raises(
        ValueError,
        match=r"`mode`.*'val_cosine_similarity' declares that it is maximized.*mode='min'",
    ):
        fit_scripted(
            model, detector, 2, cosine_similarity=[0.1, 0.2], val_cosine_similarity=[0.1, 0.2]
        )


def test_the_noise_is_not_the_bend_of_a_descent():
    # A parabola has no residual around a quadratic smoothing: its noise is the
    # floor, however steep its bend (a running mean reads the bend as noise).
    parabola = [1.0 + 0.02 * (epoch - 6) ** 2 for epoch in range(12)]
    assert curve_noise(parabola) == pytest.approx(NOISE_FLOOR * 1.0)
    # Independent noise around a falling line: its standard deviation (0.05).
    rng = np.random.default_rng(0)
    noisy = [2.0 - 0.01 * epoch + 0.05 * rng.standard_normal() for epoch in range(400)]
    assert curve_noise(noisy) == pytest.approx(0.05, rel=0.1)


def test_a_minimum_in_the_first_epochs_is_flagged_before_the_noise_exists():
    # Minimum at epoch 1, then more than 2% above it at epochs 2 and 3 (5.6%,
    # 11%) while training falls: overfitting at 3, with no noise yet.
    rising = [1.0, 0.9, 0.95, 1.0, 1.05, 1.1]
    detector, states = _detect(FALLING[:6], rising, {"patience": 3})
    assert states == ["learning"] * 3 + ["overfitting"] * 3 and detector.noise is None
    assert detector.onset_epoch == 1
    # A rise of under 2% waits for the noise (7 validated epochs).
    _, slow = _detect(FALLING[:6], [1.0, 0.9, 0.91, 0.915, 0.917, 0.918], {"patience": 3})
    assert set(slow) == {"learning"}
    # So does a single epoch above 2%: it must hold at the last 2.
    _, once = _detect(FALLING[:6], [1.0, 0.9, 0.95, 0.91, 0.95, 0.91], {"patience": 3})
    assert set(once) == {"learning"}


def test_min_delta_raises_the_warm_up_band_as_it_raises_the_noise_band():
    # 0.95-1.1 lie 6-22% above the best (0.9), over the warm-up's 2%, but
    # within min_delta (0.5) of it: as once the noise exists, no overfitting.
    rising = [1.0, 0.9, 0.95, 1.0, 1.05, 1.1]
    _, within = _detect(FALLING[:6], rising, {"patience": 3, "min_delta": 0.5})
    assert set(within) == {"learning"}
    # 1.45 and 1.5 at epochs 3-4 lie more than 0.5 above it.
    beyond = [1.0, 0.9, 1.2, 1.45, 1.5, 1.6]
    detector, states = _detect(FALLING[:6], beyond, {"patience": 3, "min_delta": 0.5})
    assert states.index("overfitting") == 4 and detector.onset_epoch == 1


def test_a_warm_up_alarm_says_what_it_measured():
    # No noise exists yet: the message names the 2% of Prechelt's GL, not a
    # noise of 0.
    detector = OverfittingDetector(patience=3, verbose=0)
    with pytest.warns(UserWarning) as record:
        fit_scripted(
            tiny_model(), detector, 5, loss=FALLING[:5], val_loss=[1.0, 0.9, 0.95, 1.0, 1.05]
        )
    (message,) = [str(w.message) for w in record if "Overfitting detected" in str(w.message)]
    assert "at epoch 4" in message and "more than 2% above its best (epoch 2)" in message
    assert "noise (0)" not in message
    # Another criterion names itself and its level, not the noise band.
    gl = OverfittingDetector(patience=3, smoothing=0.0, criterion="gl", verbose=0)
    with pytest.warns(
        UserWarning, match=r"worse than its best \(epoch 5\) by criterion='gl' at 5\."
    ):
        fit_scripted(tiny_model(), gl, 12, loss=FALLING, val_loss=U_SHAPE)


def test_a_short_run_flagged_before_its_noise_exists_was_judged():
    detector = OverfittingDetector(patience=3, action=lambda *_: None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit_scripted(
            tiny_model(), detector, 5, loss=FALLING[:5], val_loss=[1.0, 0.9, 0.95, 1.0, 1.05]
        )
    assert detector.state == "overfitting"
    assert not [w for w in record if "judged nothing" in str(w.message)]


def test_a_run_too_short_to_judge_says_so():
    detector = OverfittingDetector(patience=3)
    with pytest.warns(UserWarning, match=r"judged nothing: 5 finite validated epochs.*needs 7"):
        fit_scripted(tiny_model(), detector, 5, loss=FALLING[:5], val_loss=U_SHAPE[:5])
    assert set(detector.states) == {"learning"}


def test_config_round_trip():
    detector = OverfittingDetector(
        patience=4,
        min_gap=0.1,
        action="rollback",
        criterion="p_value",
        threshold=0.3,
        monitor="val_accuracy",
        mode="max",
        validation_samples=500,
    )
    config = detector.get_config()
    assert config["validation_samples"] == 500
    assert OverfittingDetector.from_config(config).get_config() == config
    assert config["criterion"] == "p_value" and config["train_mode"] == "auto"
    assert keras.saving.get_registered_name(OverfittingDetector) == "kreg>OverfittingDetector"


def test_positional_arguments_of_earlier_versions_keep_their_meaning():
    detector = OverfittingDetector("val_loss", "loss", 4, 0.01, 0.2, 0.5, 0.02, "min", "stop", 2)
    assert (detector.patience, detector.min_delta, detector.min_gap, detector.smoothing) == (
        4,
        0.01,
        0.2,
        0.5,
    )
    assert (
        detector.underfit_tolerance,
        detector.mode,
        detector.action,
        detector.start_from_epoch,
    ) == (0.02, "min", "stop", 2)


def test_plot_marks_onset_and_best_epoch(tmp_path):
    history = {"loss": FALLING, "val_loss": U_SHAPE}
    path = plot_training_curves(
        history, tmp_path / "plots" / "curves.png", onset_epoch=4, best_epoch=4
    )
    data = open(path, "rb").read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    with pytest.raises(ValueError, match=r"`metrics`.*val_accuracy.*Available"):
        plot_training_curves(history, tmp_path / "x.png", metrics=("val_accuracy",))
    log_path = plot_training_curves(history, tmp_path / "log.png", yscale="log")
    assert open(log_path, "rb").read() != data  # a different picture, same curves
    with pytest.raises(ValueError, match=r"`yscale`.*'symlog'"):
        plot_training_curves(history, tmp_path / "x.png", yscale="symlog")


def test_overfitting_is_logged_only_while_validation_stays_above_its_band():
    # The U of U_SHAPE (overfitting from epoch 6), then validation comes back to
    # its best's level and stays there within the noise: the last 2 epochs are
    # no longer above the band, so by its definition that is no overfitting;
    # with training still falling it is a memorizing plateau (saturated).
    val = U_SHAPE[:9] + [1.11, 1.1, 1.12, 1.11, 1.1, 1.12, 1.11]
    train = [2.0 * 0.85**epoch for epoch in range(len(val))]
    detector, states = _detect(train, val, {"patience": 3})
    assert states[8] == "overfitting", states
    assert states[-3:] == ["saturated"] * 3, states
    assert detector.onset_epoch == 4


def test_rollback_restores_non_trainable_weights_too():
    # Batch norm's moving statistics are weights that no gradient moves: the
    # onset epoch's are restored with the rest.
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(0.01), "mse")
    detector = OverfittingDetector(patience=3, smoothing=0.0, action="rollback", verbose=0)
    script = fit_scripted(model, detector, 12, loss=FALLING, val_loss=U_SHAPE)
    assert len(script.weights) == 7 and detector.onset_epoch == 4
    assert len(model.non_trainable_weights) == 2
    for restored, expected in zip(model.get_weights(), script.weights[4]):
        np.testing.assert_array_equal(restored, expected)
    assert not np.array_equal(script.weights[4][-4], script.weights[6][-4]), (
        "the moving mean moved after the onset"
    )


def test_accuracy_noise_is_the_binomial_standard_error_over_the_validation_samples():
    assert accuracy_noise(0.9, 100) == pytest.approx(0.03)
    assert accuracy_noise(1.0, 200) == pytest.approx(1 / 200), "one sample's worth at p = 1"


def test_an_accuracy_over_known_validation_samples_is_judged_from_its_binomial_noise():
    kwargs = {**ON_ACCURACY, "patience": 3}
    _, from_curve = _detect(ACCURACY, VAL_ACCURACY, kwargs)
    # Over 2000 samples the peak 0.72 has a standard error of 0.010: 0.70 and
    # 0.69 at epochs 4-5 lie below it by more than 1.5 times it, before the
    # curve's own noise (7 validated epochs) exists.
    detector, binomial = _detect(ACCURACY, VAL_ACCURACY, {**kwargs, "validation_samples": 2000})
    assert from_curve.index("overfitting") == 6
    assert binomial.index("overfitting") == 5 and detector.onset_epoch == 3
    assert detector.noise == pytest.approx(accuracy_noise(0.72, 2000))
    # Over 100 samples the same dip is within the noise (0.045): not yet overfitting.
    _, few = _detect(ACCURACY, VAL_ACCURACY, {**kwargs, "validation_samples": 100})
    assert few.index("overfitting") > 5


def test_validation_samples_on_an_accuracy_logged_as_a_percentage_is_an_error():
    detector = OverfittingDetector(**ON_ACCURACY, validation_samples=100, action=lambda *_: None)
    with pytest.raises(
        ValueError, match=r"`validation_samples`.*`val_accuracy` logged 72\.0.*\[0, 1\]"
    ):
        detector.update(0, 70.0, 72.0)


@pytest.mark.parametrize("monitor", ["val_loss", "loss", "val_output_a_loss"])
def test_validation_samples_on_a_loss_monitor_is_refused_at_construction(monitor):
    # A loss below 1 (a cross-entropy near convergence) would pass for a
    # fraction, and its noise would silently be a binomial one.
    with pytest.raises(
        ValueError,
        match=rf"`validation_samples`.*accuracy.*Received: validation_samples=100, monitor='{monitor}'",
    ):
        OverfittingDetector(monitor=monitor, validation_samples=100)
