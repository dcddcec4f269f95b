"""`run_layer_test`: kreg's own small version of Keras's private layer test helper.

Every layer test calls it once per configuration. It checks, in order: the config
round trip (and registration under `kreg>`), a symbolic and an eager call with the
expected output shape, masking support, one training step in a model (weights
move, loss finite), the same step compiled with XLA/JIT where the backend compiles,
a `.keras` save and load with identical outputs, and mixed precision.
"""

import copy

import keras
import numpy as np
from keras import ops

# torch.compile on CPU takes minutes per model and is not what users of kreg's
# layers on torch run by default; TensorFlow (XLA) and JAX (jit) are checked.
JIT_BACKENDS = ("tensorflow", "jax")


def _first(outputs):
    """The main output of a layer that may also return states."""
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def _shape_without_batch(shape):
    return tuple(shape)[1:]


def _is_multi_input(input_shape):
    """A list of shapes: the layer is called on a list of tensors (`Add`-like)."""
    return isinstance(input_shape, list) and all(
        isinstance(shape, (list, tuple)) for shape in input_shape
    )


def _random_input(input_shape, seed=0):
    rng = np.random.default_rng(seed)
    if _is_multi_input(input_shape):
        return [rng.standard_normal(shape).astype("float32") for shape in input_shape]
    return rng.standard_normal(input_shape).astype("float32")


def _symbolic_input(input_shape):
    if _is_multi_input(input_shape):
        return [keras.Input(shape=_shape_without_batch(shape)) for shape in input_shape]
    return keras.Input(shape=_shape_without_batch(input_shape))


def _check_config_round_trip(layer):
    cls = type(layer)
    if cls.__module__.startswith("kreg"):
        registered = keras.saving.get_registered_name(cls)
        assert registered == f"kreg>{cls.__name__}", (
            f"{cls.__name__} is not registered under the kreg package: {registered}"
        )
    config = layer.get_config()
    # A copy: some Keras from_config methods (RNN's) pop keys from their argument.
    revived = cls.from_config(copy.deepcopy(config))
    assert revived.get_config() == config, "from_config(get_config()) lost settings"
    serialized = keras.saving.serialize_keras_object(layer)
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is cls
    assert deserialized.get_config() == config


def _build_model(layer_factory, input_shape):
    inputs = _symbolic_input(input_shape)
    outputs = _first(layer_factory()(inputs))
    return keras.Model(inputs, outputs)


def _check_training_step(layer_factory, input_shape, x, jit_compile):
    model = _build_model(layer_factory, input_shape)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit_compile)
    y = np.ones(_first(model(x)).shape, dtype="float32")
    before = [ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=len(keras.tree.flatten(x)[0]), epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss), f"training loss is not finite: {loss}"
    after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    for weight, old, new in zip(model.trainable_weights, before, after):
        assert not np.array_equal(old, new), f"{weight.path} did not change in fit"
    return model


def _check_save_and_load(model, x, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: registration suffices
    expected = ops.convert_to_numpy(model(x, training=False))
    actual = ops.convert_to_numpy(loaded(x, training=False))
    np.testing.assert_array_equal(actual, expected, err_msg="outputs changed after load")


def _check_mixed_precision(layer_factory, x):
    layer = layer_factory(dtype="mixed_float16")
    for training in (False, True):
        output = _first(layer(x, training=training))
        assert keras.backend.standardize_dtype(output.dtype) == "float16", (
            f"mixed_float16 output has dtype {output.dtype} (training={training})"
        )
        assert np.all(np.isfinite(ops.convert_to_numpy(ops.cast(output, "float32"))))
    for weight in layer.weights:
        # Integer state (a mode flag, a step counter) has no precision to keep.
        if "float" in weight.dtype:
            assert weight.dtype == "float32", f"{weight.path} is not kept in float32"


def run_layer_test(
    layer_factory,
    input_shape,
    expected_output_shape,
    tmp_path,
    *,
    supports_masking=None,
    run_training_check=True,
    run_jit_check=True,
    run_mixed_precision_check=True,
):
    """Checks one layer configuration end to end.

    Args:
        layer_factory: Callable returning a fresh layer; called with `dtype=...`
            for the mixed precision check (a `functools.partial` of the class).
        input_shape: Full input shape, batch included; a list of them for a
            layer called on a list of tensors.
        expected_output_shape: Full shape of the (first) output.
        tmp_path: Folder for the `.keras` file (pytest's `tmp_path`).
        supports_masking: If not `None`, the expected `layer.supports_masking`.
        run_training_check: Run a training step, its JIT twin and save/load.
        run_jit_check: Also train with `jit_compile=True` (TensorFlow, JAX).
        run_mixed_precision_check: Check a `mixed_float16` layer.
    """
    expected_output_shape = tuple(expected_output_shape)
    x = _random_input(input_shape)

    layer = layer_factory()
    _check_config_round_trip(layer)

    symbolic = _first(layer(_symbolic_input(input_shape)))
    assert tuple(symbolic.shape) == (None, *expected_output_shape[1:]), (
        f"symbolic output shape {symbolic.shape}, expected {expected_output_shape}"
    )
    for training in (False, True):
        eager = _first(layer(x, training=training))
        assert tuple(eager.shape) == expected_output_shape, (
            f"eager output shape {eager.shape} (training={training}), "
            f"expected {expected_output_shape}"
        )
    _check_config_round_trip(layer)  # again, now that the layer is built

    if supports_masking is not None:
        assert layer.supports_masking == supports_masking

    if run_training_check:
        model = _check_training_step(layer_factory, input_shape, x, jit_compile=False)
        _check_save_and_load(model, x, tmp_path)
        if run_jit_check and keras.backend.backend() in JIT_BACKENDS:
            _check_training_step(layer_factory, input_shape, x, jit_compile=True)

    if run_mixed_precision_check:
        _check_mixed_precision(layer_factory, x)
