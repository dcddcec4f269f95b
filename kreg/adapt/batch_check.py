"""Checking a batch before it can change an adapted model.

A stream brings what it brings: an empty batch, a batch of another shape than
the model's input, a sensor's NaN. A batch norm that learns from it keeps it
for good (a NaN mean makes every later prediction NaN), so each batch is
checked in NumPy before the model sees it. `adapt_batchnorm` and
`PreciseBatchNorm` check their `data`, when it is one array, the same way.
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


class NonFiniteStatisticsError(ValueError):
    """A pass over finite inputs gave statistics or outputs that are not finite
    (values whose squares overflow float32, or a model that overflows on
    them): nothing of it was written. `OnlineAdapter` treats the batch as one
    holding NaN or inf (`on_invalid`)."""


def check_arrays(model, x, subject):
    """Checks that `x` is inputs `model` takes; returns whether they hold no NaN or inf.

    Raises a `ValueError` for empty inputs, or inputs of another structure or
    shape than the model's, and a `TypeError` for values that are not real
    numbers; each message starts with `subject` ("Batch 3", "Invalid value
    received for argument `data`: it").
    """
    leaves = [np.asarray(leaf) for leaf in keras.tree.flatten(x)]
    shapes = _input_shapes(model)
    if shapes is not None and len(leaves) != len(shapes):
        raise ValueError(
            f"{subject} holds {len(leaves)} array(s) but `{model.name}` takes "
            f"{len(shapes)} input(s) of shapes {shapes}."
        )
    for position, leaf in enumerate(leaves):
        if leaf.dtype.kind not in "biu" and not _is_float(leaf.dtype):
            raise TypeError(
                f"{subject} holds values of dtype {leaf.dtype} (input {position}); "
                f"`{model.name}` takes real numbers."
            )
        if leaf.ndim == 0 or leaf.shape[0] == 0:
            raise ValueError(f"{subject} is empty (input {position} has shape {leaf.shape}).")
        if shapes is not None:
            expected, shape = shapes[position], leaf.shape
            # Keras adds or drops a trailing axis of size 1 (`Functional`'s
            # `_adjust_input_rank`, keras/src/models/functional.py).
            if len(expected) == leaf.ndim + 1 and expected[-1] == 1:
                shape = (*shape, 1)
            elif len(expected) == leaf.ndim - 1 and shape[-1] == 1:
                shape = shape[:-1]
            if len(expected) != len(shape) or any(
                want is not None and want != got for want, got in zip(expected[1:], shape[1:])
            ):
                raise ValueError(
                    f"{subject} has shape {leaf.shape} (input {position}); "
                    f"`{model.name}` takes {expected}."
                )
    return all(np.all(np.isfinite(leaf)) for leaf in leaves if _is_float(leaf.dtype))


def is_finite_batch(model, x, index):
    """`check_arrays` of batch `index` of a stream: its errors name the batch."""
    return check_arrays(model, x, f"Batch {index}")


def check_data_arrays(model, data):
    """The checks of `check_arrays` for the `data` argument of `adapt_batchnorm`
    and `PreciseBatchNorm`, when it is one array (found before any pass, and
    before training); NaN or inf are a `ValueError` too."""
    subject = "Invalid value received for argument `data`: it"
    if not check_arrays(model, data, subject):
        raise ValueError(
            f"{subject} holds values that are not finite (NaN or infinite): the batch "
            "norms' statistics over it would be NaN. Remove or replace those samples."
        )


def invalid_batch_error(index, cause=None):
    """The error of batch `index`, which holds NaN or inf, or (`cause`, a
    `NonFiniteStatisticsError`) gave statistics or outputs that are not finite."""
    what = (
        "holds NaN or infinite values"
        if cause is None
        else f"gave values that are not finite ({cause})"
    )
    return ValueError(
        f"Batch {index} {what}: adapting to it would write them into the model for "
        "good, so the adapter refused it and left the model as it was. Clean or drop "
        "the batch, or pass on_invalid='skip' to predict such batches without adapting "
        "to them."
    )
