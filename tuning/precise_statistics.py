"""The `PreciseBatchNorm` a hypermodel adds to a trial's `fit`, from `fit`'s own arguments."""

import math
import warnings

import keras

from kreg.callbacks import PreciseBatchNorm
from kreg.model_graph import batch_norm_layers

# Inference batch of the statistics pass over array inputs: the first batch norm's
# estimate is exact at any batch size, and larger batches make the pass cheaper.
STATISTICS_BATCH_SIZE = 256


def _is_arrays(x):
    leaves = keras.tree.flatten(x)
    return bool(leaves) and all(len(getattr(leaf, "shape", ())) >= 1 for leaf in leaves)


def training_inputs(args, kwargs):
    """The training inputs of `model.fit(*args, **kwargs)` a second pass can read again.

    Arrays (without the `validation_split` part, which Keras takes from the end),
    a `tf.data.Dataset` or a `keras.utils.PyDataset` (targets in them are ignored);
    `None` for a one-shot Python generator.
    """
    x = args[0] if args else kwargs.get("x")
    if x is None:
        return None
    if _is_arrays(x):
        split = kwargs.get("validation_split") or 0.0
        if split:
            samples = keras.tree.flatten(x)[0].shape[0]
            # As Keras splits it: train_validation_split in
            # keras/src/trainers/data_adapters/array_slicing.py.
            cut = int(math.floor(samples * (1.0 - split)))
            x = keras.tree.map_structure(lambda leaf: leaf[:cut], x)
        return x
    if hasattr(x, "element_spec") or isinstance(x, keras.utils.PyDataset):
        return x
    return None


class TrialPreciseBatchNorm(PreciseBatchNorm):
    """`PreciseBatchNorm` as added to every trial of a search.

    A search mixes models with and without batch norm (a norm choice of
    `"layer"` or `"none"`), so a trial's model without one is expected: it is
    not warned about, as a model given by hand is.
    """

    def on_train_begin(self, logs=None):
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="PreciseBatchNorm: the model has no batch norm"
            )
            super().on_train_begin(logs)


def precise_batch_norm_callback(args, kwargs, callbacks, model=None):
    """A `kreg.callbacks.PreciseBatchNorm` on the training inputs of `fit(*args, **kwargs)`,
    or `None` when not needed or not possible.

    Not needed: `callbacks` has one already, or `model` (when given) has no
    trainable batch norm; without `model` the callback is made anyway (it does
    nothing on a model without batch norms). Not possible: inputs a second pass
    cannot read (a warning says so when `model` has batch norms).
    """
    if any(isinstance(callback, PreciseBatchNorm) for callback in callbacks):
        return None
    if model is not None and not any(layer.trainable for layer in batch_norm_layers(model)):
        return None
    data = training_inputs(args, kwargs)
    if data is None:
        if model is None:
            return None
        warnings.warn(
            "kreg: the training inputs cannot be read twice (a Python generator?), so "
            "the batch norms keep their moving statistics for validation. Pass arrays, "
            "a tf.data.Dataset or a keras.utils.PyDataset, or add "
            "kreg.callbacks.PreciseBatchNorm(data) to the callbacks yourself.",
            stacklevel=3,
        )
        return None
    if _is_arrays(data):
        return TrialPreciseBatchNorm(data, batch_size=STATISTICS_BATCH_SIZE)
    # A dataset that repeats forever (`dataset.repeat()` with `steps_per_epoch`)
    # is read for as many batches as an epoch trains on.
    return TrialPreciseBatchNorm(data, steps=kwargs.get("steps_per_epoch"))
