"""Batch norms that `kreg.fold_batch_norms` can fold into the layer before or after them."""

from kreg.fold import foldable_pairs

ID = "foldable-batch-norm"
SEVERITY = "info"


def check(view):
    pairs = []
    for prefix, model in view.graph_models:
        if not model.built:
            continue  # folding needs the weights
        # What fold_batch_norms would fold, so the advice matches what it does.
        for layer, bn, _ in foldable_pairs(model):
            pairs.append((prefix + layer, prefix + bn))
    if pairs:
        yield (
            [path for pair in pairs for path in pair],
            f"{len(pairs)} batch norm(s) next to a conv/dense layer they fold into: at "
            "inference each is a fixed per-channel scale and shift kept as a separate op",
            "fold them before export: kreg.fold_batch_norms(model), or "
            "`kreg fold IN.keras OUT.keras`",
        )
