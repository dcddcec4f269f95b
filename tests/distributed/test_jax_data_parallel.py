"""kreg under Keras 3's own distribution API on JAX: `keras.distribution.DataParallel`
over two devices, here two virtual CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`).

The flag and the backend are read once per process, so the checks run in a
fresh process (tests/multi_worker.py's `run_isolated`), from any backend's run.
"""

import numpy as np
import pytest

import multi_worker

pytestmark = pytest.mark.integration

JAX_ON_TWO_CPUS = {
    "KERAS_BACKEND": "jax",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
}


def _data_parallel():
    import jax
    import keras

    devices = jax.devices()
    assert len(devices) == 2, devices
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return devices


def _replicated_on(model):
    """How many devices hold each of the model's variables (2: replicated)."""
    return sorted({len(v.value.sharding.device_set) for v in model.variables})


def every_layer(folder):
    import keras

    from layer_examples import EXAMPLES

    _data_parallel()
    results = {}
    for name, example in sorted(EXAMPLES.items()):
        keras.utils.set_random_seed(0)
        model = example.model()
        model.compile(keras.optimizers.SGD(0.05), "mse")
        x, y = example.inputs(32), np.ones((32, 1), "float32")
        before = [w.copy() for w in model.get_weights()]
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        path = f"{folder}/{name}.keras"
        model.save(path)
        reloaded = keras.saving.load_model(path)
        probe = example.inputs(8, seed=9)
        results[name] = {
            "loss": history.history["loss"],
            "moved": any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights())),
            "devices": _replicated_on(model),
            "prediction": np.asarray(model.predict(probe, batch_size=8, verbose=0)),
            "reloaded": np.asarray(reloaded.predict(probe, batch_size=8, verbose=0)),
            "reloaded_devices": _replicated_on(reloaded),
        }
    return results


def test_every_layer_trains_saves_and_loads_under_data_parallel(tmp_path):
    from layer_examples import EXAMPLES

    results = multi_worker.run_isolated(
        every_layer, JAX_ON_TWO_CPUS, kwargs={"folder": str(tmp_path)}, timeout=600
    )
    assert sorted(results) == sorted(EXAMPLES)
    for name, result in results.items():
        assert np.all(np.isfinite(result["loss"])), name
        assert result["moved"], f"{name}: training changed no weight"
        assert result["devices"] == [2], f"{name}: variables on {result['devices']} devices"
        assert result["reloaded_devices"] == [2], name
        np.testing.assert_allclose(
            result["reloaded"], result["prediction"], rtol=1e-6, atol=1e-6, err_msg=name
        )


def model_tools():
    import keras

    import kreg

    _data_parallel()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    # adapt_batchnorm: the exact statistics of all the data, batches split over devices.
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(), kreg.AdaptiveBatchNormalization()]
    )
    x = rng.normal([0.0, 3.0, -2.0], [1.0, 2.0, 0.5], (32, 3)).astype("float32")
    report = kreg.adapt_batchnorm(model, x, batch_size=8, verbose=0)
    adapt = {
        "data": x,
        "samples": report.samples,
        "mean": np.asarray(model.layers[0].moving_mean),
        "variance": np.asarray(model.layers[0].moving_variance),
    }

    # fold_batch_norms on a model trained under the distribution.
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(0.05), "mse")
    x = rng.standard_normal((32, 6, 6, 2)).astype("float32")
    model.fit(x, np.ones((32, 1), "float32"), batch_size=8, epochs=2, verbose=0)
    folded, fold_report = kreg.fold_batch_norms(model, return_report=True)
    fold = {
        "folded": len(fold_report.folded),
        "layers": [type(layer).__name__ for layer in folded.layers],
        "original": np.asarray(model.predict(x[:8], batch_size=8, verbose=0)),
        "prediction": np.asarray(folded.predict(x[:8], batch_size=8, verbose=0)),
        "devices": _replicated_on(folded),
    }
    return {"adapt": adapt, "fold": fold}


@pytest.fixture(scope="module")
def model_tools_results():
    return multi_worker.run_isolated(model_tools, JAX_ON_TWO_CPUS, timeout=600)


def test_adapt_batchnorm_under_data_parallel(model_tools_results):
    adapt = model_tools_results["adapt"]
    assert adapt["samples"] == len(adapt["data"])
    np.testing.assert_allclose(adapt["mean"], adapt["data"].mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(adapt["variance"], adapt["data"].var(axis=0), rtol=1e-4, atol=1e-4)


def test_fold_batch_norms_under_data_parallel(model_tools_results):
    fold = model_tools_results["fold"]
    assert fold["folded"] == 1
    assert "BatchNormalization" not in fold["layers"]
    assert fold["devices"] == [2]
    np.testing.assert_allclose(fold["prediction"], fold["original"], rtol=1e-4, atol=1e-5)
