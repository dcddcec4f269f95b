"""`adapt_batchnorm`: adapt a trained model's batch norms to unlabeled target data."""

import dataclasses

import keras
import numpy as np
from keras import ops

from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg._validation import check_positive
from kreg.adapt.batch_check import check_data_arrays
from kreg.adapt.eata import SampleSelection
from kreg.adapt.eata import minimize_selected_entropy
from kreg.adapt.entropy import check_from_logits
from kreg.adapt.entropy import minimize_entropy
from kreg.adapt.reestimation import assign_statistics
from kreg.adapt.reestimation import collect_statistics
from kreg.adapt.reestimation import is_empty
from kreg.adapt.reestimation import no_data_error
from kreg.adapt.report import AdaptationReport
from kreg.adapt.report import LayerChange
from kreg.model_graph import batch_norm_layers

METHODS = ("reestimate", "tent", "eata")


def adapt_batchnorm(
    model,
    data,
    method="reestimate",
    steps=None,
    batch_size=None,
    verbose="auto",
    epochs=1,
    learning_rate=1e-3,
    from_logits=False,
    entropy_factor=0.4,
    redundancy_threshold=0.4,
    collapse_factor=0.03,
):
    """Adapts a trained model's batch norms to unlabeled target data, in place.

    `"reestimate"` (AdaBN) replaces the moving mean and variance of every
    `BatchNormalization` in the model (Keras's and kreg's, nested models too) by
    the exact mean and variance of its inputs over `data`, in one pass. During the
    pass each batch norm normalizes with its batch's statistics, as in training,
    so that each layer's statistics are those of inputs normalized by statistics
    of the target data, not the stale source ones. No other weight changes.

    `"tent"` first trains only the batch norms' scale and shift (`gamma`,
    `beta`) to minimize the entropy of the model's predictions on `data`, with
    batch statistics, for `epochs` passes; then re-estimates the statistics as
    above, so the adapted model needs no special inference mode.

    `"eata"` (EATA) does the same as `"tent"`, one update per batch, learning
    only from the reliable and non-redundant samples, weighted by confidence,
    and goes back to the scale and shift it started from when the filtered
    entropy collapses (SAR's guard); see the arguments below. Then the
    statistics are re-estimated. EATA's Fisher regularizer is not included.

    The batch norms inside kreg's fused layers (`Conv2DBatchNorm`...) are
    adapted too: during the pass those layers run unfolded.

    The model is changed only when the whole adaptation has succeeded: if it
    fails midway (bad data, an interrupt), every weight is as it was. Data
    holding NaN or infinite values, and data that gives a batch norm fewer than
    two values per channel in the whole pass (one sample before a dense layer's
    batch norm: no variance to estimate), raise a `ValueError` and change
    nothing.

    Small batches are pooled exactly: each layer's statistics are the
    count-weighted mean and variance over every batch (within-batch plus
    between-batch variance), the same whatever the batch size. During the pass a
    batch that gives a layer one value per channel (`batch_size=1` before a
    dense layer's batch norm) is normalized with the layer's stored statistics,
    so that the layers after it see inputs that vary. A channel constant over
    the whole data keeps its stored variance: a zero variance is never written.

    Under a `tf.distribute` strategy the statistics are those of all replicas'
    samples together, the same as on one device.

    Args:
        model: A built Keras model with at least one batch norm layer.
        data: What `model.predict` accepts: arrays, a `tf.data.Dataset`, a
            `keras.utils.PyDataset`. Targets in the data are ignored. One
            array is checked before the pass, as `OnlineAdapter` checks a
            batch: another shape than the model's input, or values that are
            not real numbers, are an error naming `data`.
        method: `"reestimate"` (default), `"tent"` or `"eata"`.
        steps: Optional number of batches to use per pass, as in `predict`.
        batch_size: Optional batch size for array data (default 32, as `predict`).
        verbose: Progress bar, as in `predict` / `fit`.
        epochs: `"tent"` and `"eata"`: passes of entropy minimization.
            Defaults to 1.
        learning_rate: `"tent"` and `"eata"`: Adam's learning rate. Defaults
            to `1e-3`.
        from_logits: `"tent"` and `"eata"`: whether the model outputs logits (else
            probabilities, as after a softmax or, for one unit, a sigmoid). The
            entropy is that of the first output of a multi-output model.
        entropy_factor: `"eata"` only: a sample is reliable when its entropy
            is below `entropy_factor * ln C` (C classes), EATA's `e_margin`.
            In `(0, 1]`; defaults to `0.4`, EATA's value.
        redundancy_threshold: `"eata"` only: a sample whose predicted
            distribution has a cosine similarity to the moving average of the
            accepted predictions at or above this is dropped as redundant
            (EATA's `d_margin`). Defaults to `0.4`, EATA's value for CIFAR-10
            (it uses `0.05` for ImageNet's 1000 classes, where predictions are
            further apart); `None` keeps every reliable sample.
        collapse_factor: `"eata"` only: when the moving average of the
            filtered entropy falls below `collapse_factor * ln C`, the scale
            and shift go back to their values before adaptation (SAR's reset;
            SAR's 0.2 nats on 1000 classes is 0.03 ln C). Defaults to `0.03`;
            `0` turns the guard off.

    Returns:
        An `AdaptationReport`: the method, the number of samples, and how much
        each layer's statistics moved.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    >>> target = np.random.default_rng(0).normal(5.0, 2.0, (256, 3))
    >>> report = adapt_batchnorm(model, target, verbose=0)
    >>> moving_mean = keras.ops.convert_to_numpy(model.layers[0].moving_mean)
    >>> np.allclose(moving_mean, target.mean(axis=0))
    True

    Reference:
        - [Li et al., 2016](https://arxiv.org/abs/1603.04779), AdaBN.
        - [Wang et al., 2021](https://arxiv.org/abs/2006.10726), Tent: fully
          test-time adaptation by entropy minimization.
        - [Niu et al., 2022](https://arxiv.org/abs/2204.02610), EATA: efficient
          test-time adaptation without forgetting.
        - [Niu et al., 2023](https://arxiv.org/abs/2302.12400), SAR: stable
          test-time adaptation in dynamic wild world (the collapse reset).
    """
    plan = plan_adaptation(
        model,
        data,
        method,
        dict(steps=steps, batch_size=batch_size, verbose=verbose),
        dict(epochs=epochs, learning_rate=learning_rate, from_logits=from_logits),
        (entropy_factor, redundancy_threshold, collapse_factor),
    )
    statistics, samples, resets = run_adaptation_pass(plan)
    return commit_adaptation(plan, statistics, samples, resets)


@dataclasses.dataclass
class AdaptationPlan:
    """What `adapt_batchnorm` will do, every argument checked: the first of its
    three steps (plan, pass, commit)."""

    model: object
    layers: list  # the batch norms to adapt
    method: str
    data: object
    predict_options: dict  # steps, batch_size, verbose
    epochs: int
    learning_rate: float
    from_logits: bool
    selection: SampleSelection  # "eata"'s filters and collapse watch


def plan_adaptation(model, data, method, predict_options, entropy_options, eata_thresholds):
    """Checks every argument of `adapt_batchnorm` before anything runs."""
    check_choice("method", method, METHODS)
    epochs = check_at_least("epochs", entropy_options["epochs"], integer=True, minimum=1)
    selection = SampleSelection(*eata_thresholds)
    learning_rate = check_positive("learning_rate", entropy_options["learning_rate"])
    if not isinstance(model, keras.Model) or not model.built:
        raise TypeError(
            "Invalid value received for argument `model`. Expected a built "
            f"`keras.Model`. Received: model={model!r}"
        )
    from_logits = entropy_options["from_logits"]
    if method in ("tent", "eata"):
        check_from_logits(model, from_logits)
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError(
            f"The model `{model.name}` has no BatchNormalization layer: there are no "
            "statistics for adapt_batchnorm to adapt."
        )
    if is_empty(data):
        raise no_data_error()
    if isinstance(data, np.ndarray):
        # The checks of a stream's batches: Keras's own errors for these name
        # neither the argument nor the array (a string array is a graph error).
        check_data_arrays(model, data)
    return AdaptationPlan(
        model, layers, method, data, predict_options, epochs, learning_rate, from_logits, selection
    )


def run_adaptation_pass(plan):
    """The entropy steps (tent, eata) and the statistics pass; returns
    `(statistics, samples, collapse resets)`. If anything fails, every variable
    of the model is put back as it was."""
    model, layers, data, options = plan.model, plan.layers, plan.data, plan.predict_options
    # Every variable, not only the batch norms': on JAX, a `predict` or `fit` that
    # raises midway leaves all of the model's variables emptied (Keras moves them
    # into the compiled function's state and puts them back only at the end).
    saved = [ops.convert_to_numpy(v) for v in model.variables]
    resets = 0
    try:
        if plan.method == "tent":
            minimize_entropy(
                model, layers, data, plan.epochs, plan.learning_rate, plan.from_logits, options
            )
        elif plan.method == "eata":
            resets = minimize_selected_entropy(
                model,
                layers,
                data,
                plan.epochs,
                plan.learning_rate,
                plan.from_logits,
                options,
                plan.selection,
            )
        statistics, samples = collect_statistics(model, layers, data, options)
    except BaseException:
        for variable, value in zip(model.variables, saved):
            variable.assign(value)
        raise
    return statistics, samples, resets


def commit_adaptation(plan, statistics, samples, resets):
    """Writes the statistics into the batch norms; returns the `AdaptationReport`."""
    changes = []
    for layer, (mean, variance, _) in zip(plan.layers, statistics):
        old_mean, old_variance = (
            ops.convert_to_numpy(v) for v in (layer.moving_mean, layer.moving_variance)
        )
        assign_statistics(layer, mean, variance)
        old_std = np.sqrt(old_variance + layer.epsilon)
        changes.append(
            LayerChange(
                name=layer.path,
                mean_shift=float(np.mean(np.abs(mean - old_mean) / old_std)),
                variance_ratio=float(
                    np.mean((variance + layer.epsilon) / (old_variance + layer.epsilon))
                ),
            )
        )
    return AdaptationReport(
        method=plan.method,
        samples=samples,
        layers=changes,
        affine_updated=plan.method in ("tent", "eata"),
        collapse_resets=resets,
    )
