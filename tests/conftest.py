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


def _channels_first_convolutions_run():
    """Whether this backend's CPU kernels run a channels_first (NCHW) convolution.

    JAX and torch always do. TensorFlow's own CPU Conv2D is NHWC only; its oneDNN
    kernels take NCHW too, and TensorFlow turns them on by default on some CPUs only
    (`TF_ENABLE_ONEDNN_OPTS` forces either). So TensorFlow passes these tests on one
    machine and fails them on another with `UnimplementedError` ("The Conv2D op
    currently only supports the NHWC tensor format on the CPU"), Keras's own Conv2D
    alike. Asked once, of Keras's Conv2D itself, when the tests are collected.
    """
    try:
        keras.layers.Conv2D(1, 1, data_format="channels_first")(np.zeros((1, 1, 2, 2), "float32"))
    except Exception as error:  # the backend's own "unimplemented" error type
        if "NHWC" in str(error) or "Unimplemented" in type(error).__name__:
            return False
        raise
    return True


needs_channels_first_convolutions = pytest.mark.skipif(
    not _channels_first_convolutions_run(),
    reason="this TensorFlow build's CPU convolutions are channels_last only",
)


def float16_convolutions_run(data_format):
    """Whether a float16 convolution in `data_format` runs on this backend's CPU: not a
    channels_first one on TensorFlow, whose kernels (its own and oneDNN's) have no
    float16 NCHW convolution. Keras's own Conv2D fails alike; JAX and torch run it."""
    return BACKEND != "tensorflow" or data_format != "channels_first"


def to_numpy(x):
    """A tensor or variable of any backend as a NumPy array (tests import it)."""
    return np.asarray(keras.ops.convert_to_numpy(x))
