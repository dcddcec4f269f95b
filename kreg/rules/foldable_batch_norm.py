"""Batch norms that `kreg.fold_batch_norms` can fold into the layer before them."""

import warnings

from kreg import _model_graph
from kreg import fold

ID = "foldable-batch-norm"
SEVERITY = "info"


def check(view):
    pairs = []
    for prefix, model in view.graph_models:
        if not model.built:
            continue  # folding needs the weights
        # The same planner fold_batch_norms uses, so the advice matches what it does.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            planned = fold._plan_pairs(model, _model_graph.read_graph(model), fold.FoldReport())
        for conv, bn, _, _ in planned.values():
            pairs.append((prefix + conv.name, prefix + bn.name))
    if pairs:
        yield (
            [path for pair in pairs for path in pair],
            f"{len(pairs)} batch norm(s) directly after a conv/dense layer: at "
            "inference each is a fixed per-channel scale and shift kept as a separate op",
            "fold them before export: kreg.fold_batch_norms(model), or "
            "`kreg fold IN.keras OUT.keras`",
        )
