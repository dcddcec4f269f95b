"""Checking a batch before it can change an adapted model.

A stream brings what it brings: an empty batch, a batch of another shape than
the model's input, a sensor's NaN. A batch norm that learns from it keeps it
for good (a NaN mean makes every later prediction NaN), so each batch is
checked in NumPy before the model sees it.
"""

import keras
import numpy as np

ON_INVALID = ("raise", "skip")


def _input_shapes(model):
    try:
        return [tuple(tensor.shape) for tensor in keras.tree.flatten(model.inputs)]
    except (AttributeError, ValueError):  # a subclassed model: no declared inputs
        return None


def _is_float(dtype):
    """Whether `dtype` is a float, ml_dtypes' bfloat16 included: NumPy gives it
    kind "V", and it is what a bfloat16 tensor of JAX or TensorFlow converts to;
    Keras's dtype names know it."""
    try:
        return keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))
    except ValueError:  # not a dtype Keras computes with (strings, objects)
        return False


def is_finite_batch(model, x, index):
    """Checks that `x` is a batch `model` takes; returns whether it holds no NaN or inf.

    Raises a `ValueError` naming the batch `index` for an empty batch, a batch of
    another structure or shape than the model's inputs, and a `TypeError` for
    non-numeric values.
    """
    leaves = [np.asarray(leaf) for leaf in keras.tree.flatten(x)]
    shapes = _input_shapes(model)
    if shapes is not None and len(leaves) != len(shapes):
        raise ValueError(
            f"Batch {index} holds {len(leaves)} array(s) but `{model.name}` takes "
            f"{len(shapes)} input(s) of shapes {shapes}."
        )
    for position, leaf in enumerate(leaves):
        if leaf.dtype.kind not in "biu" and not _is_float(leaf.dtype):
            raise TypeError(
                f"Batch {index} holds values of dtype {leaf.dtype} (input {position}); "
                f"`{model.name}` takes numbers."
            )
        if leaf.ndim == 0 or leaf.shape[0] == 0:
            raise ValueError(f"Batch {index} is empty (input {position} has shape {leaf.shape}).")
        if shapes is not None:
            expected = shapes[position]
            if len(expected) != leaf.ndim or any(
                want is not None and want != got for want, got in zip(expected[1:], leaf.shape[1:])
            ):
                raise ValueError(
                    f"Batch {index} has shape {leaf.shape} (input {position}); "
                    f"`{model.name}` takes {expected}."
                )
    return all(np.all(np.isfinite(leaf)) for leaf in leaves if _is_float(leaf.dtype))


def invalid_batch_error(index):
    return ValueError(
        f"Batch {index} holds NaN or infinite values: adapting to it would write them "
        "into the model for good, so the adapter refused it and left the model as it "
        "was. Clean or drop the batch, or pass on_invalid='skip' to predict such "
        "batches without adapting to them."
    )
