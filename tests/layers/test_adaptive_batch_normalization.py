"""AdaptiveBatchNormalization: a drop-in BatchNormalization with test-time modes."""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from conftest import to_numpy as _numpy
from kreg.layers import AdaptiveBatchNormalization
from layer_test_case import JIT_BACKENDS
from layer_test_case import run_layer_test

MODES = ("running", "batch", "mixed", "online")
EPSILON = 1e-3


def _normalize(x, mean, variance, gamma, beta, epsilon=EPSILON):
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _layer_with_statistics(channels=3, **kwargs):
    """A built layer with non-trivial weights: gamma, beta and running statistics."""
    layer = AdaptiveBatchNormalization(**kwargs)
    layer.build((None, channels))
    rng = np.random.default_rng(7)
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    layer.beta.assign(rng.normal(size=channels).astype("float32"))
    layer.moving_mean.assign(rng.normal(size=channels).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    return layer


def _weights(layer):
    return {w.name: _numpy(w).copy() for w in layer.weights}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("input_shape", [(6, 4), (2, 5, 5, 3)], ids=["dense", "conv"])
def test_layer_contract(mode, input_shape, tmp_path):
    run_layer_test(
        functools.partial(AdaptiveBatchNormalization, test_time_mode=mode),
        input_shape,
        input_shape,
        tmp_path,
        supports_masking=True,
    )


# Drop-in: default settings behave exactly as keras.layers.BatchNormalization.


BN_SETTINGS = [
    {},
    {"axis": 1, "momentum": 0.9, "epsilon": 1e-5},
    {"center": False, "scale": False},
    {"renorm": True, "renorm_clipping": {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0}},
]


def _twin_models(settings, input_shape):
    inputs = keras.Input(input_shape[1:])
    outputs = []
    for bn in (keras.layers.BatchNormalization, AdaptiveBatchNormalization):
        keras.utils.set_random_seed(3)
        hidden = keras.layers.Dense(4, kernel_initializer="glorot_uniform")(inputs)
        outputs.append(keras.Model(inputs, keras.layers.Dense(1)(bn(**settings)(hidden))))
    return outputs


@pytest.mark.parametrize("settings", BN_SETTINGS, ids=["defaults", "axis1", "no_affine", "renorm"])
def test_default_mode_reproduces_batch_normalization(settings):
    keras_model, kreg_model = _twin_models(settings, (None, 5))
    # The same starting weights.
    for source, target in zip(keras_model.layers, kreg_model.layers):
        for a, b in zip(source.weights, target.weights):
            b.assign(_numpy(a))  # a copy: JAX donates the buffers it trains
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (64, 5)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    for model in (keras_model, kreg_model):
        model.compile(keras.optimizers.SGD(0.05), "mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    keras_bn, kreg_bn = keras_model.layers[2], kreg_model.layers[2]
    keras_weights, kreg_weights = _weights(keras_bn), _weights(kreg_bn)
    assert list(keras_weights) == list(kreg_weights)
    for name, value in keras_weights.items():
        np.testing.assert_allclose(kreg_weights[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
    for training in (False, True):
        np.testing.assert_allclose(
            _numpy(kreg_model(x, training=training)),
            _numpy(keras_model(x, training=training)),
            rtol=1e-5,
            atol=1e-5,
        )
    keras_config, kreg_config = keras_bn.get_config(), kreg_bn.get_config()
    added = {
        key: kreg_config.pop(key) for key in ("test_time_mode", "prior_strength", "online_momentum")
    }
    assert added == {"test_time_mode": "running", "prior_strength": 16.0, "online_momentum": 0.9}
    keras_config.pop("name"), kreg_config.pop("name")
    assert kreg_config == keras_config


def test_frozen_layer_uses_its_test_time_mode_in_training_like_batch_normalization():
    layer = _layer_with_statistics(test_time_mode="batch")
    layer.trainable = False
    x = np.random.default_rng(1).normal(4.0, 2.0, (32, 3)).astype("float32")
    before = _weights(layer)
    output = _numpy(layer(x, training=True))
    expected = _normalize(x, x.mean(0), x.var(0), before["gamma"], before["beta"])
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(_weights(layer)["moving_mean"], before["moving_mean"])


# Each mode against a NumPy reference.


def test_batch_mode_normalizes_with_the_batch_statistics():
    layer = _layer_with_statistics(test_time_mode="batch")
    w = _weights(layer)
    x = np.random.default_rng(1).normal(4.0, 2.0, (32, 3)).astype("float32")
    np.testing.assert_allclose(
        _numpy(layer(x)),
        _normalize(x, x.mean(0), x.var(0), w["gamma"], w["beta"]),
        rtol=1e-4,
        atol=1e-4,
    )
    assert _weights(layer)["moving_mean"].tolist() == w["moving_mean"].tolist()


def test_batch_mode_reduces_every_axis_but_the_channels():
    layer = AdaptiveBatchNormalization(axis=1, test_time_mode="batch", center=False, scale=False)
    x = np.random.default_rng(2).normal(1.0, 3.0, (4, 3, 5, 5)).astype("float32")
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    variance = x.var(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(
        _numpy(layer(x)), (x - mean) / np.sqrt(variance + EPSILON), rtol=1e-4, atol=1e-4
    )


def test_batch_mode_leaves_masked_timesteps_out_of_the_statistics():
    layer = AdaptiveBatchNormalization(test_time_mode="batch", center=False, scale=False)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6, 2)).astype("float32")
    mask = np.ones((4, 6), bool)
    mask[:, 4:] = False
    x[:, 4:] = 1000.0  # padding that must not move the statistics
    kept = x[mask]
    output = _numpy(layer(x, mask=mask))
    expected = (x - kept.mean(0)) / np.sqrt(kept.var(0) + EPSILON)
    np.testing.assert_allclose(output[mask], expected[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prior_strength", [0.0, 8.0, 100.0])
def test_mixed_mode_weights_running_and_batch_statistics_by_the_prior(prior_strength):
    layer = _layer_with_statistics(test_time_mode="mixed", prior_strength=prior_strength)
    w = _weights(layer)
    x = np.random.default_rng(4).normal(-2.0, 0.5, (16, 3)).astype("float32")
    source_weight = prior_strength / (prior_strength + len(x))
    mean = source_weight * w["moving_mean"] + (1 - source_weight) * x.mean(0)
    variance = source_weight * w["moving_variance"] + (1 - source_weight) * x.var(0)
    np.testing.assert_allclose(
        _numpy(layer(x)), _normalize(x, mean, variance, w["gamma"], w["beta"]), rtol=1e-4, atol=1e-4
    )


def test_online_mode_updates_the_running_statistics_and_normalizes_with_them():
    layer = _layer_with_statistics(test_time_mode="online", online_momentum=0.8)
    w = _weights(layer)
    mean, variance = w["moving_mean"].astype("float64"), w["moving_variance"].astype("float64")
    rng = np.random.default_rng(5)
    for step in range(4):
        x = rng.normal(step, 1.0 + step, (20, 3)).astype("float32")
        mean = 0.8 * mean + 0.2 * x.mean(0)
        variance = 0.8 * variance + 0.2 * x.var(0)
        output = _numpy(layer(x))
        np.testing.assert_allclose(
            output, _normalize(x, mean, variance, w["gamma"], w["beta"]), rtol=1e-4, atol=1e-4
        )
    np.testing.assert_allclose(_weights(layer)["moving_mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(_weights(layer)["moving_variance"], variance, rtol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "mixed", "online"])
def test_a_batch_of_one_falls_back_to_the_running_statistics(mode):
    layer = _layer_with_statistics(test_time_mode=mode)
    w = _weights(layer)
    x = np.full((1, 3), 5.0, "float32")
    output = _numpy(layer(x))
    assert np.all(np.isfinite(output))
    np.testing.assert_allclose(
        output,
        _normalize(x, w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"]),
        rtol=1e-5,
    )
    np.testing.assert_array_equal(_weights(layer)["moving_variance"], w["moving_variance"])


# Switching the mode of a model that has already run.


@pytest.mark.parametrize("jit_compile", [False, True])
def test_switching_the_mode_after_predict_takes_effect_on_the_next_predict(jit_compile):
    if jit_compile and keras.backend.backend() not in JIT_BACKENDS:
        pytest.skip("no jit_compile on this backend")
    layer = AdaptiveBatchNormalization()
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(jit_compile=jit_compile)
    x = np.random.default_rng(6).normal(5.0, 2.0, (32, 3)).astype("float32")
    running = model.predict(x, batch_size=32, verbose=0)
    np.testing.assert_allclose(running, x / np.sqrt(1 + EPSILON), rtol=1e-5)

    layer.test_time_mode = "batch"
    batch = model.predict(x, batch_size=32, verbose=0)
    np.testing.assert_allclose(batch.mean(0), 0.0, atol=1e-4)

    layer.test_time_mode = "running"
    np.testing.assert_allclose(model.predict(x, batch_size=32, verbose=0), running, rtol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile only")
def test_switching_the_mode_under_torch_compile_compiles_nothing_again():
    # Keras compiles with torch.compile on torch; a data-dependent branch on the
    # mode made dynamo recompile on every batch until its recompile limit, then
    # give up compiling the layer.
    import torch._dynamo

    layer = AdaptiveBatchNormalization()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3), layer])
    model.compile(jit_compile=True)
    x = np.random.default_rng(6).normal(5.0, 2.0, (32, 3)).astype("float32")
    running = model.predict(x, batch_size=32, verbose=0)  # compiles once
    with torch._dynamo.config.patch(error_on_recompile=True):
        outputs = {}
        for mode in ("batch", "mixed", "running", "online"):
            layer.test_time_mode = mode
            outputs[mode] = model.predict(x, batch_size=32, verbose=0)
    np.testing.assert_allclose(outputs["running"], running, rtol=1e-6)
    assert not np.allclose(outputs["batch"], running)
    np.testing.assert_allclose(outputs["batch"].mean(0), 0.0, atol=1e-3)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile only")
def test_the_running_mode_computes_no_batch_statistics_under_torch_compile():
    # The drop-in must cost what BatchNormalization costs: under torch.compile the
    # layer selected between the running and the batch statistics, so it reduced
    # every batch for statistics it then discarded. The profiler records the ops
    # run, those inside custom operators included; Dynamo's "eager" backend runs
    # the captured graph op by op, where Keras's default (inductor) fuses them.
    import torch

    def reduces_the_batch(mode):
        """Whether predicting in `mode` runs a reduction over the (16, 3) batch."""
        layer.test_time_mode = mode
        with torch.profiler.profile(record_shapes=True) as profile, torch.no_grad():
            outputs[mode] = _numpy(predict(x))
        return any(
            [16, 3] in event.input_shapes
            for event in profile.events()
            if any(word in event.name for word in ("mean", "var", "sum", "all", "any"))
        )

    layer = _layer_with_statistics()
    w = _weights(layer)
    x = torch.as_tensor(np.random.default_rng(8).normal(3.0, 2.0, (16, 3)).astype("float32"))
    layer(x, training=False)  # eager: Keras creates its call-context state, which Dynamo guards
    predict = torch.compile(lambda inputs: layer(inputs, training=False), backend="eager")
    with torch.no_grad():  # as Keras's predict (keras/src/backend/torch/trainer.py)
        predict(x)  # compiles once
    outputs = {}
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert not reduces_the_batch("running")
        assert reduces_the_batch("batch")  # the probe sees what it looks for
    expected = _normalize(_numpy(x), w["moving_mean"], w["moving_variance"], w["gamma"], w["beta"])
    np.testing.assert_allclose(outputs["running"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["batch"].mean(0), w["beta"], atol=1e-4)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile only")
def test_a_compiled_step_differentiates_through_the_batch_statistics_on_torch():
    # Tent-like steps take gradients through the test-time statistics; under
    # torch.compile with gradients on they must match eager torch.
    import torch

    dense = keras.layers.Dense(3)
    layer = AdaptiveBatchNormalization(test_time_mode="batch")
    x = torch.as_tensor(np.random.default_rng(9).normal(size=(16, 3)).astype("float32"))
    layer(dense(x), training=False)

    def kernel_gradient():
        loss = ops.sum(layer(dense(x), training=False) ** 3)
        return torch.autograd.grad(loss, dense.kernel.value)[0]

    np.testing.assert_allclose(
        _numpy(torch.compile(kernel_gradient, backend="eager")()),
        _numpy(kernel_gradient()),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax.lax.cond outside jit")
@pytest.mark.parametrize("mode", MODES)
def test_predicting_without_jit_compiles_nothing_after_the_first_batch_on_jax(mode):
    # Outside `jax.jit`, `jax.lax.cond` traces and compiles its branches again on
    # every call (they are new closures each time): the running mode cost 32x
    # Keras's batch norm in `predict_on_batch` without `jit_compile`.
    import jax

    model = keras.Sequential([keras.Input((3,)), AdaptiveBatchNormalization(test_time_mode=mode)])
    model.compile(jit_compile=False)
    x = np.random.default_rng(10).normal(size=(16, 3)).astype("float32")
    model.predict_on_batch(x)
    compiled = []

    def listener(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        model.predict_on_batch(x)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == []


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile only")
def test_the_online_mode_under_torch_compile_writes_what_eager_torch_writes():
    # Under torch.compile the online write happens inside the statistics
    # operator, outside the compiled graph; a batch holding NaN writes nothing.
    x = np.random.default_rng(11).normal(5.0, 2.0, (32, 3)).astype("float32")
    dirty = x.copy()
    dirty[0, 0] = np.nan
    written = []
    for jit_compile in (False, True):
        layer = AdaptiveBatchNormalization(test_time_mode="online")
        model = keras.Sequential([keras.Input((3,)), layer])
        model.compile(jit_compile=jit_compile)
        outputs = [model.predict_on_batch(x) for _ in range(3)]
        model.predict_on_batch(dirty)
        written.append((_weights(layer), outputs))
    (eager, eager_outputs), (compiled, compiled_outputs) = written
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(compiled[name], eager[name], rtol=1e-6, err_msg=name)
    assert not np.allclose(eager["moving_mean"], 0.0)
    np.testing.assert_allclose(compiled_outputs, eager_outputs, rtol=1e-5, atol=1e-5)


# Run in a subprocess: a reload rebinds the module's class, which other tests'
# isinstance checks (kreg.set_test_time_mode) would then miss.
_RELOAD_THEN_PREDICT = """
import importlib
import keras
import numpy as np
from kreg.layers import adaptive_batch_normalization as module

layer = module.AdaptiveBatchNormalization(test_time_mode="batch")
model = keras.Sequential([keras.Input((3,)), layer])
model.compile(jit_compile=True)
x = np.random.default_rng(12).normal(5.0, 2.0, (8, 3)).astype("float32")
before = model.predict(x, verbose=0)
importlib.reload(module)
np.testing.assert_array_equal(model.predict(x, verbose=0), before)
"""


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile only")
def test_a_layer_made_before_its_module_is_reloaded_still_predicts_under_torch_compile():
    # `importlib.reload` (IPython's autoreload) runs the module again in the
    # same namespace; the layers made before it must stay reachable to the
    # statistics operator.
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "torch"}
    run = subprocess.run(
        [sys.executable, "-c", _RELOAD_THEN_PREDICT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile only")
@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle"])
def test_a_copied_layer_predicts_under_torch_compile(how):
    # The statistics operator finds its layer in a registry filled by
    # `__init__`; copies must reach it too. Keras pickles (and so copies) a
    # layer through its saving library (keras/src/saving/keras_saveable.py,
    # `__reduce__`), which builds the copy with `__init__`.
    import copy
    import pickle

    copies = {
        "deepcopy": copy.deepcopy,
        "copy": copy.copy,
        "pickle": lambda layer: pickle.loads(pickle.dumps(layer)),
    }
    layer = _layer_with_statistics(test_time_mode="mixed")
    copied = copies[how](layer)
    assert copied is not layer
    x = np.random.default_rng(14).normal(3.0, 2.0, (8, 3)).astype("float32")
    outputs = []
    for bn in (layer, copied):
        model = keras.Sequential([keras.Input((3,)), bn])
        model.compile(jit_compile=True)
        outputs.append(model.predict(x, verbose=0))
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.export only")
def test_a_torch_export_runs_after_its_layer_is_gone(tmp_path):
    # `torch.export` traces with Dynamo as `torch.compile` does; an exported
    # program must hold the statistics themselves, not a key to a live layer.
    import gc

    import torch

    layer = _layer_with_statistics(test_time_mode="batch")
    model = keras.Sequential([keras.Input((3,)), layer])
    x = np.random.default_rng(13).normal(3.0, 2.0, (1, 3)).astype("float32")
    expected = _numpy(model(x))
    with torch.no_grad():  # as a predict-time export would run
        model.export(tmp_path / "model.pt2", format="torch", verbose=False)
    del model, layer
    gc.collect()
    program = torch.export.load(tmp_path / "model.pt2")
    np.testing.assert_allclose(_numpy(program.module()(torch.as_tensor(x))), expected, rtol=1e-6)


def test_save_and_load_keep_the_mode_and_a_loaded_model_can_switch(tmp_path):
    layer = _layer_with_statistics(test_time_mode="mixed", prior_strength=4)
    model = keras.Sequential([keras.Input((3,)), layer])
    x = np.random.default_rng(8).normal(3.0, 1.0, (10, 3)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    loaded_layer = loaded.layers[0]
    assert loaded_layer.test_time_mode == "mixed" and loaded_layer.prior_strength == 4.0
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))

    loaded_layer.test_time_mode = "running"
    layer.test_time_mode = "running"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded_layer.get_config()["test_time_mode"] == "running"


def test_a_mode_switched_before_saving_is_the_mode_loaded(tmp_path):
    model = keras.Sequential([keras.Input((3,)), AdaptiveBatchNormalization()])
    model.predict(np.ones((2, 3), "float32"), verbose=0)
    model.layers[0].test_time_mode = "online"
    model.save(tmp_path / "model.keras")
    assert keras.saving.load_model(tmp_path / "model.keras").layers[0].test_time_mode == "online"


# Bad input.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_time_mode": "adaptive"}, "test_time_mode"),
        ({"test_time_mode": None}, "test_time_mode"),
        ({"prior_strength": -1}, "prior_strength"),
        ({"prior_strength": "16"}, "prior_strength"),
        ({"online_momentum": 1.0}, "online_momentum"),
        ({"online_momentum": -0.1}, "online_momentum"),
    ],
)
def test_bad_arguments_fail_at_construction_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveBatchNormalization(**kwargs)


def test_setting_an_unknown_mode_fails_and_keeps_the_old_one():
    layer = _layer_with_statistics(test_time_mode="batch")
    with pytest.raises(ValueError, match="'running', 'batch', 'mixed', 'online'.*'tent'"):
        layer.test_time_mode = "tent"
    assert layer.test_time_mode == "batch"


@pytest.mark.parametrize("settings", BN_SETTINGS, ids=["defaults", "axis1", "no_affine", "renorm"])
def test_the_weights_are_batch_normalizations_and_move_both_ways(settings):
    keras_layer = keras.layers.BatchNormalization(**settings, name="bn")
    layer = AdaptiveBatchNormalization(**settings, test_time_mode="batch", name="bn")
    for bn in (keras_layer, layer):
        bn.build((None, 3, 3))
    assert [w.path for w in layer.weights] == [w.path for w in keras_layer.weights]
    assert [w.shape for w in layer.weights] == [w.shape for w in keras_layer.weights]
    assert len(layer.trainable_weights) == len(keras_layer.trainable_weights)
    assert len(layer.non_trainable_weights) == len(keras_layer.non_trainable_weights)
    rng = np.random.default_rng(0)
    values = [rng.uniform(0.5, 2.0, w.shape).astype("float32") for w in keras_layer.weights]
    keras_layer.set_weights(values)
    layer.set_weights(keras_layer.get_weights())
    for a, b in zip(layer.get_weights(), values):
        np.testing.assert_array_equal(a, b)
    layer.set_weights([v + 1.0 for v in values])
    keras_layer.set_weights(layer.get_weights())
    for a, b in zip(keras_layer.get_weights(), values):
        np.testing.assert_array_equal(a, b + 1.0)
    assert layer.test_time_mode == "batch"  # the mode is not a weight


def test_load_weights_from_the_same_model_keeps_the_mode(tmp_path):
    model = keras.Sequential([keras.Input((3,)), AdaptiveBatchNormalization()])
    model.layers[0].moving_mean.assign(np.array([1.0, 2.0, 3.0], "float32"))
    model.save_weights(tmp_path / "model.weights.h5")
    model.layers[0].moving_mean.assign(np.zeros(3, "float32"))
    model.layers[0].test_time_mode = "mixed"
    model.load_weights(tmp_path / "model.weights.h5")
    np.testing.assert_array_equal(_numpy(model.layers[0].moving_mean), [1.0, 2.0, 3.0])
    assert model.layers[0].test_time_mode == "mixed"


def test_padded_positions_holding_nan_do_not_reach_the_statistics():
    layer = AdaptiveBatchNormalization(test_time_mode="batch", center=False, scale=False)
    x = np.random.default_rng(9).normal(size=(2, 4, 3)).astype("float32")
    mask = np.array([[True, True, True, False]] * 2)
    x[:, 3] = np.nan
    output = _numpy(layer(x, mask=mask))
    assert np.all(np.isfinite(output[mask]))


@pytest.mark.tensorflow_only
def test_export_keeps_the_mode(tmp_path):
    import tensorflow as tf

    model = keras.Sequential(
        [keras.Input((3,)), AdaptiveBatchNormalization(test_time_mode="batch")]
    )
    x = np.random.default_rng(10).normal(3.0, 2.0, (8, 3)).astype("float32")
    model.export(tmp_path / "saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))  # kept: it owns the variables
    served = loaded.serve(x).numpy()
    np.testing.assert_allclose(served, _numpy(model(x)), rtol=1e-6)
    np.testing.assert_allclose(served.mean(0), 0.0, atol=1e-4)


def test_the_mode_is_state_that_compiled_functions_receive_but_not_a_weight():
    layer = AdaptiveBatchNormalization()
    layer.build((None, 3))
    assert len(layer.weights) == 4 and "test_time_mode" not in [w.name for w in layer.weights]
    listed = [v.name for v in layer.variables]
    # JAX's jitted predict receives `variables`; torch reads the tensor live.
    assert ("test_time_mode" in listed) == (keras.backend.backend() != "torch")


def test_batch_normalizations_positional_arguments_mean_the_same():
    layer = AdaptiveBatchNormalization(1, 0.9, 1e-5, test_time_mode="batch")
    keras_layer = keras.layers.BatchNormalization(1, 0.9, 1e-5)
    assert (layer.axis, layer.momentum, layer.epsilon) == (
        keras_layer.axis,
        keras_layer.momentum,
        keras_layer.epsilon,
    )
    with pytest.raises(ValueError, match="not_an_argument"):  # as BatchNormalization
        AdaptiveBatchNormalization(not_an_argument=1)


# A sample holding NaN or inf: it reaches no other sample's output, and no
# running statistic.


@pytest.mark.parametrize("mode", ["batch", "mixed", "online"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_bad_sample_changes_no_other_output_and_no_statistic(mode, bad):
    x = np.random.default_rng(4).normal(2.0, 3.0, size=(6, 3)).astype("float32")
    dirty = x.copy()
    dirty[2, 0] = bad
    without = _layer_with_statistics(test_time_mode=mode)
    with_bad = _layer_with_statistics(test_time_mode=mode)
    stored = _weights(with_bad)
    expected = _numpy(without(np.delete(x, 2, axis=0)))
    got = _numpy(with_bad(dirty))
    np.testing.assert_allclose(np.delete(got, 2, axis=0), expected, rtol=1e-5, atol=1e-5)
    # The batch held a bad value: the "online" mode writes nothing of it.
    for name, value in stored.items():
        np.testing.assert_array_equal(_weights(with_bad)[name], value, err_msg=name)


def test_online_mode_keeps_updating_after_a_bad_batch():
    layer = _layer_with_statistics(test_time_mode="online")
    bad = np.full((4, 3), np.nan, "float32")
    layer(bad)
    stored = _weights(layer)["moving_mean"]
    layer(np.random.default_rng(1).normal(3.0, 1.0, (8, 3)).astype("float32"))
    moved = _weights(layer)["moving_mean"]
    assert np.all(np.isfinite(moved)) and not np.allclose(moved, stored)


def test_online_mode_never_writes_a_zero_variance():
    # A channel constant over the batch (a dead ReLU unit) has batch variance 0;
    # with online_momentum=0 that 0 was written, and the next inputs that vary
    # in it were divided by sqrt(epsilon). It keeps its stored variance instead.
    layer = _layer_with_statistics(test_time_mode="online", online_momentum=0.0)
    stored = _weights(layer)["moving_variance"]
    x = np.random.default_rng(2).normal(0.0, 1.0, (8, 3)).astype("float32")
    x[:, 1] = 0.0
    layer(x)
    written = _weights(layer)["moving_variance"]
    assert written[1] == stored[1]
    np.testing.assert_allclose(written[[0, 2]], x[:, [0, 2]].var(axis=0), rtol=1e-5)


def test_online_mode_writes_nothing_when_the_statistics_overflow():
    # Finite inputs whose squares overflow float32 give an infinite variance; it
    # was written (and so would be a NaN reaching a synchronized layer's
    # all-replica statistics from another replica). Nothing that is not finite is.
    layer = _layer_with_statistics(test_time_mode="online")
    stored = _weights(layer)
    x = np.random.default_rng(3).normal(0.0, 1.0, (8, 3)).astype("float32")
    x[:4, 0], x[4:, 0] = 3e38, -3e38
    layer(x)
    for name, value in stored.items():
        np.testing.assert_array_equal(_weights(layer)[name], value, err_msg=name)
