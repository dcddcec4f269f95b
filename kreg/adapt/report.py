"""What `adapt_batchnorm` changed: one entry per batch norm layer."""

import dataclasses


@dataclasses.dataclass
class LayerChange:
    """How one batch norm layer's statistics moved."""

    name: str
    mean_shift: float  # mean |new - old| moving mean, in units of the old std
    variance_ratio: float  # mean new / old moving variance


@dataclasses.dataclass
class AdaptationReport:
    """What `adapt_batchnorm` changed.

    `str(report)` prints one line for the run, then one line per batch norm layer.

    Attributes:
        method: The adaptation method that ran: `"reestimate"`, `"tent"` or
            `"eata"`.
        samples: Number of samples in the data the statistics come from.
        layers: A `LayerChange` (`name`, `mean_shift` in units of the old
            standard deviation, `variance_ratio` new / old) per batch norm layer,
            in the order the layers are found in the model.
        affine_updated: Whether scale and shift were trained (tent, eata).
        collapse_resets: How many times EATA's collapse guard reset scale and
            shift (0 for the other methods).

    Example:

    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(8)(inputs)
    >>> outputs = keras.layers.BatchNormalization(name="norm")(hidden)
    >>> model = keras.Model(inputs, outputs)
    >>> x = np.random.default_rng(0).normal(3.0, 1.0, (64, 4)).astype("float32")
    >>> report = adapt_batchnorm(model, x, verbose=0)
    >>> report.method, report.samples, len(report.layers)
    ('reestimate', 64, 1)
    >>> report.affine_updated
    False
    """

    method: str
    samples: int  # samples in the data the statistics come from
    layers: list  # [LayerChange], in the order the layers are found in the model
    affine_updated: bool  # whether scale and shift were trained (tent, eata)
    collapse_resets: int = 0  # eata: times the collapse guard reset scale and shift

    def __str__(self):
        lines = [
            f"adapt_batchnorm(method={self.method!r}): {len(self.layers)} batch norm "
            f"layer(s), statistics from {self.samples} samples"
            + (", scale and shift trained by entropy minimization" if self.affine_updated else "")
            + (f", {self.collapse_resets} collapse reset(s)" if self.collapse_resets else "")
        ]
        for change in self.layers:
            lines.append(
                f"  {change.name}: mean moved {change.mean_shift:.3f} std, "
                f"variance x{change.variance_ratio:.3f}"
            )
        return "\n".join(lines)
