"""Test set-up shared by every backend run (`KERAS_BACKEND` picks the backend)."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices, so that MirroredStrategy tests run two replicas.
    # This must happen before TensorFlow initializes its devices.
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "tensorflow_only: needs the TensorFlow backend (tf.distribute)"
    )


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"needs the TensorFlow backend, running {BACKEND}")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_keras_state():
    """Every test starts in float32 with a fresh Keras session and fixed seeds."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1337)
    yield
    keras.config.set_dtype_policy("float32")
    # Without Python's full garbage collection, which `clear_session` runs by
    # default: with TensorFlow, JAX or torch loaded it takes about a second, and
    # it ran after every test (a third of `make test`). Once per module instead.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_per_module():
    yield
    gc.collect()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as sequences of 8 rows, the tuning tests' data: 160 for
    training and 300 for validation (`kreg.datasets.load_digit_sequences`, seed 0)."""
    from kreg.datasets import load_digit_sequences

    (x, y), (x_val, y_val) = load_digit_sequences(train_size=160, seed=0)
    return (x, y), (x_val[:300], y_val[:300])


def to_numpy(x):
    """A tensor or variable of any backend as a NumPy array (tests import it)."""
    return np.asarray(keras.ops.convert_to_numpy(x))
