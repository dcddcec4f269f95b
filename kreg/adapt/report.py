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
    """What `adapt_batchnorm` changed."""

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


