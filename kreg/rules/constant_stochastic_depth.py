"""A deep residual model whose stochastic-depth rate is the same in every block,
where Huang et al. (2016, https://arxiv.org/abs/1603.09382) found the linear rule
(rates rising with depth) better: early blocks extract the features every later
block needs."""

from kreg.layers import StochasticDepth

ID = "constant-stochastic-depth"
SEVERITY = "info"
# Below this many blocks the schedule hardly matters.
MIN_BLOCKS = 4


def _rate(layer):
    if isinstance(layer, StochasticDepth):
        return layer.rate
    # keras.applications' ConvNeXt (and timm-style ports) call theirs `drop_path_rate`.
    if type(layer).__name__ == "StochasticDepth" and hasattr(layer, "drop_path_rate"):
        return float(layer.drop_path_rate)
    return None


def check(view):
    found = [
        (path, _rate(layer))
        for path, layer in view.unique_layers(lambda layer: _rate(layer) is not None)
    ]
    rates = {round(rate, 6) for _, rate in found}
    if len(found) >= MIN_BLOCKS and len(rates) == 1 and rates.pop() > 0:
        rate = found[0][1]
        yield (
            [path for path, _ in found],
            f"all {len(found)} stochastic-depth blocks drop at the same rate {rate:g}: the "
            "early blocks, whose features every later block uses, are dropped as often "
            "as the last ones",
            f"use the linear rule, kreg.stochastic_depth_rates({len(found)}, {rate:g}) (one "
            f"rate per block), or kreg.add_stochastic_depth(model, {rate:g})",
        )
