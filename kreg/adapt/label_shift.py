"""Telling a batch of few classes from a shifted batch by where its statistics move.

A batch drawn from one or two classes of the source distribution and a batch
of corrupted inputs both have statistics far from the stored (source) ones,
and normalizing either with its own statistics changes the predictions. Only
the second should be: on the first, the batch's statistics erase the class
signal (every sample is normalized against its own class) and prediction-time
BN, Tent and EATA collapse (the correlated-label rows of the test-time
adaptation benchmarks; measured in docs/BENCHMARKS.md).

Where the two differ is the depth at which the statistics move. A corruption
of the input (noise, blur, contrast, brightness) moves the statistics of the
first batch norm, which sees low-level features; a batch of few classes moves
the deep, class-specific features, while its low-level statistics stay close
to the source's. TTN (Lim et al., 2023) builds on the same observation that
batch norm layers differ in how sensitive they are to a domain shift.

The distance of a batch norm's input from its stored statistics is, averaged
over channels, the squared shift of the mean in stored standard deviations plus
the absolute log ratio of the variances,
`(mean - moving_mean)^2 / moving_variance + |log(variance / moving_variance)|`:
0 at the stored statistics, and a contrast change cannot hide behind a
brightness change (as it can in the second moment alone).
"""

import math

import numpy as np
from keras import ops

# A batch of source inputs leaves its low-level statistics near the source's:
# a first batch norm input further from them than a 1.5x change of the variance
# (or a shift of the mean by 0.64 standard deviations) is shifted whatever the
# deep layers do, and stored statistics that fit it that badly are no source to
# fall back on.
SOURCE_LIKE_DISTANCE = math.log(1.5)


def distance_from_stored_statistics(layer, mean, variance):
    """How far a batch whose `layer` input has `mean` / `variance` per channel is
    from the layer's moving statistics (see the module description)."""
    stored_mean = ops.convert_to_numpy(layer.moving_mean).astype("float64")
    stored_variance = ops.convert_to_numpy(layer.moving_variance).astype("float64")
    # epsilon (the layer's own) keeps dead channels, variance 0 on both sides, at 0.
    stored_variance = stored_variance + layer.epsilon
    shift = (mean - stored_mean) ** 2 / stored_variance
    spread = np.abs(np.log((variance + layer.epsilon) / stored_variance))
    return float(np.mean(shift + spread))


def few_classes_batch(layers, batch_statistics, ratio):
    """Whether the batch looks like source inputs of few classes rather than shifted ones.

    True when its first batch norm's input is less than `ratio` times as far
    from the stored statistics as its last batch norm's input, and close to
    them (`SOURCE_LIKE_DISTANCE`).

    Args:
        layers: the model's batch norms, in the order the model calls them.
        batch_statistics: `[(mean, variance, count)]` of the batch, one per layer.
        ratio: the threshold on `first distance / last distance`.
    """
    (first_mean, first_variance, _), (last_mean, last_variance, _) = (
        batch_statistics[0],
        batch_statistics[-1],
    )
    first = distance_from_stored_statistics(layers[0], first_mean, first_variance)
    last = distance_from_stored_statistics(layers[-1], last_mean, last_variance)
    return first < min(ratio * last, SOURCE_LIKE_DISTANCE)
