"""The trainable weights of a model read off the device in one transfer, end to end.

`WeightAveraging`'s EMA reads every trainable weight after every training
batch. Read one by one (`keras.ops.convert_to_numpy` per variable), the reads
cost more than the NumPy arithmetic of the update: each is a separate
device-to-host copy with its own dispatch. Here the backend concatenates the
flattened values in one compiled function (`tf.function`, `jax.jit`; PyTorch's
eager `torch.cat`, whose CPU result NumPy shares without a copy), so a read is
one call and one transfer.
"""

import math

import keras
import numpy as np

from kreg import _keras_compat


class FlatWeights:
    """Reads `model.trainable_variables` (also between two steps of JAX's `fit`)
    as one 1-D NumPy array, in their order; `shapes` unflattens it. The array
    is float32 (float64 where a variable is), whatever the variables' dtypes.

    Args:
        model: A built model; its trainable variables must not change while
            this reader is used.
    """

    def __init__(self, model):
        self.model = model
        self.variables = list(model.trainable_variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.size = sum(math.prod(shape) for shape in self.shapes)
        # At least float32: an EMA of float16/bfloat16 weights kept in their
        # dtype stops moving once `(1 - decay) * (weight - average)` is below
        # half a step of the average (0.001 * 0.1 against 0.0005 near 1).
        self.dtype = np.dtype(
            "float64" if any(v.dtype == "float64" for v in self.variables) else "float32"
        )
        self._read = _reader(self.variables, model, str(self.dtype))

    def read(self):
        """A fresh 1-D array of the current values."""
        if not self.variables:
            return np.zeros(0, self.dtype)
        return np.asarray(self._read(), dtype=self.dtype)


def _reader(variables, model, dtype):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(autograph=False)
        def concatenated():
            return tf.concat([tf.reshape(tf.cast(v.value, dtype), [-1]) for v in variables], 0)

        return lambda: concatenated().numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        concatenate = jax.jit(
            lambda values: jnp.concatenate([jnp.ravel(v).astype(dtype) for v in values])
        )
        return lambda: jax.device_get(concatenate(_keras_compat.trainable_values_in_fit(model)))
    if backend == "torch":
        import torch

        def concatenated():
            with torch.no_grad():
                flat = torch.cat([v.value.detach().reshape(-1) for v in variables])
            # torch.cat made a fresh tensor: NumPy may share it.
            return flat.to(getattr(torch, dtype)).cpu().numpy()

        return concatenated
    return lambda: np.concatenate(  # other backends: one read per variable
        [np.ravel(keras.ops.convert_to_numpy(v)) for v in variables]
    )
