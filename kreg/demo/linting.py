"""Demo: `kreg.diagnose` on a model with the mistakes the tutorials warn about."""

import keras

from kreg.diagnose import diagnose


def flawed_model():
    """A CNN with classic mistakes (each commented), trained with batches of 8."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)  # ReLU before BN; BN with batches of 8
    x = keras.layers.Dropout(0.5)(x)  # heavy dropout right after the first conv
    x = keras.layers.Conv2D(64, 3, padding="same")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(10, activation="softmax")(x)
    outputs = keras.layers.Dropout(0.3)(x)  # dropout on the output
    return keras.Model(inputs, outputs, name="flawed_cnn")


def lint_flawed_model(batch_size=8, log=print):
    """Returns `(Markdown table, summary rows)` of the findings on `flawed_model()`."""
    findings = diagnose(flawed_model(), batch_size=batch_size)
    lines = ["| severity | rule | layers | fix |", "| --- | --- | --- | --- |"]
    for finding in findings:
        log(f"  {finding.severity:<7} {finding.rule}: {', '.join(finding.layers)}")
        lines.append(
            f"| {finding.severity} | {finding.rule} | {', '.join(finding.layers)} | {finding.fix} |"
        )
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    intro = (
        f"`kreg.diagnose(model, batch_size={batch_size})` on a small CNN written with "
        "classic mistakes (`kreg diagnose model.keras` does the same from the shell):\n\n"
    )
    rows = [
        ("diagnose: findings on the flawed CNN", ", ".join(f"{n} {s}" for s, n in counts.items()))
    ]
    return intro + "\n".join(lines), rows
