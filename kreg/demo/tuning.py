"""Demo: a short keras-tuner search over the CNN's dropout rates and normalization."""


def short_search(data, out, trials, epochs, quick=False, log=print):
    """Returns `(Markdown table, summary rows)` of a pruned `RandomSearch`."""
    import keras_tuner

    from kreg.tuning import CNNHyperModel
    from kreg.tuning import OverfittingPruning

    class PrunedRandomSearch(OverfittingPruning, keras_tuner.RandomSearch):
        """RandomSearch that ends each trial once it cannot reach the search's best."""

    filters, dense = ((8, 16), 32) if quick else ((32, 64), 128)
    hypermodel = CNNHyperModel((8, 8, 1), 10, filters=filters, dense_units=dense, seed=1)
    tuner = PrunedRandomSearch(
        hypermodel,
        objective="val_accuracy",
        max_trials=trials,
        seed=1,  # keras-tuner reads seed=0 as "no seed"
        directory=str(out),
        project_name="tuner",
        overwrite=True,
    )
    log(
        f"  RandomSearch, {trials} trials of up to {epochs} epochs, trials pruned once they cannot "
        "reach the search's best; "
        "batch norms validated with statistics re-estimated on the training data (PreciseBatchNorm)"
    )
    tuner.search(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=epochs,
        batch_size=32,
        verbose=0,
    )
    lines = ["| trial | regularization | best val accuracy | epochs |", "| --- | --- | --- | --- |"]
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        score = "failed" if trial.score is None else f"{trial.score:.3f}"
        epochs_run = tuner.trial_epochs.get(trial.trial_id, 0)
        pruned = " (pruned)" if trial.trial_id in tuner.pruned_trials else ""
        description = hypermodel.space.describe(trial.hyperparameters)
        lines.append(f"| {trial.trial_id} | {description} | {score} | {epochs_run}{pruned} |")
        log(f"    trial {trial.trial_id}: {description}: {score}, {epochs_run} epochs{pruned}")
    best = tuner.oracle.get_best_trials(1)[0]
    best_words = hypermodel.space.describe(best.hyperparameters)
    budget = trials * epochs
    text = (
        "\n".join(lines) + f"\n\nBest: {best_words} (val accuracy {best.score:.3f}); "
        f"{tuner.total_epochs} epochs trained of the {budget} a search without pruning would run."
    )
    rows = [
        ("tuning: best regularization found", f"{best_words} ({best.score:.3f})"),
        ("tuning: epochs trained / without pruning", f"{tuner.total_epochs} / {budget}"),
    ]
    comparison = _batch_norm_against_the_rest(tuner.oracle.trials.values())
    if comparison:
        text += f"\n\n{comparison}"
        rows.append(("tuning: batch norm vs the other norms", comparison))
        log(f"    {comparison}")
    return text, rows


def _batch_norm_against_the_rest(trials):
    """The best batch-norm trial's score against the best of the other norms, in words."""
    scores = {True: [], False: []}
    for trial in trials:
        if trial.score is not None:
            scores[trial.hyperparameters.values.get("norm") == "batch"].append(trial.score)
    if not scores[True] or not scores[False]:
        return None
    batch, other = max(scores[True]), max(scores[False])
    return (
        f"best batch-norm trial {batch:.3f}, best other norm {other:.3f} "
        f"({100 * (batch - other):+.1f} points)"
    )
