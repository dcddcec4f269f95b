"""A deep conv stack with no normalization layer at all."""

from kreg.rules import _roles

ID = "missing-normalization"
SEVERITY = "warning"
MIN_CONVS = 4


def check(view):
    convs = view.unique_layers(_roles.is_conv)
    if len(convs) >= MIN_CONVS and not view.unique_layers(_roles.is_normalization):
        yield (
            [path for path, _ in convs],
            f"{len(convs)} convolutions and no normalization layer: a deep conv stack "
            "without normalization trains slowly and is fragile to the learning rate "
            "and initialization",
            "Conv(use_bias=False) -> keras.layers.BatchNormalization -> ReLU in each "
            "block, or kreg.layers.Conv2DBatchNorm; keras.layers.GroupNormalization "
            "if batches are small",
        )
