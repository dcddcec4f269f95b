"""Element dropout on a conv feature map, where neighbouring activations carry the
same information (Tompson et al. 2015, https://arxiv.org/abs/1411.4280; Ghiasi et
al. 2018, https://arxiv.org/abs/1810.12890)."""

from kreg.rules import _roles

ID = "element-dropout-on-feature-map"
SEVERITY = "info"


def check(view):
    early = _roles.early_convs(view)
    for node in view.calls:
        if not _roles.is_element_dropout(node.layer) or node.layer.rate == 0:
            continue
        role, conv = _roles.dropout_role(view, node, early)
        if role in ("early conv", "late conv"):
            yield (
                [conv.path, node.path],
                f"element dropout `{node.path}` on the feature map of `{conv.path}`: "
                "neighbouring activations are strongly correlated, so a dropped unit is "
                "mostly restored by its neighbours and the regularization is weak",
                "drop whole channels (keras.layers.SpatialDropout2D) or contiguous "
                "regions (kreg.layers.DropBlock2D(rate, block_size)) instead",
            )
