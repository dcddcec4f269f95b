"""`kreg demo`: kreg's tools on data that ships with the install (no download).

Each section is one module of this package; `run` strings them together, prints
a summary table and writes a Markdown report with its plots to `out`.
"""

import pathlib
import time

import keras

from kreg._extras import require
from kreg.demo.cnn_training import digit_data
from kreg.demo.cnn_training import train_with_and_without_callbacks
from kreg.demo.folding import fold_and_time
from kreg.demo.linting import lint_flawed_model
from kreg.demo.recurrent import recurrent_regularization_study
from kreg.demo.recurrent import recurrent_variants
from kreg.demo.recurrent import summarize
from kreg.demo.shift import adaptation_under_shift
from kreg.demo.tuning import short_search

__all__ = ["recurrent_regularization_study", "run", "summarize"]


def run(quick=False, out=None, log=print):
    """Runs the demo; `quick` shrinks every section to seconds (for tests).

    Returns the summary rows `[(what, result)]`.
    """
    # Checked before the first section runs, not minutes later when one needs it.
    for module in ("keras_tuner", "matplotlib", "sklearn"):
        require(module, extra="demo", feature="kreg demo")
    out = pathlib.Path("kreg-demo" if out is None else out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sections, summary = [], []

    def section(number, title):
        log(f"\n[{number}/{TOTAL}] {title}")

    TOTAL = 6
    log(f"kreg demo on the {keras.backend.backend()} backend; report in {out}/")

    section(1, "A small CNN on 300 digits, with and without kreg's callbacks")
    data = digit_data()
    model, table, rows = train_with_and_without_callbacks(
        data, out, epochs=4 if quick else 40, quick=quick, log=log
    )
    sections.append(
        (
            "Training: overfitting detected, best epoch kept",
            table + "\n\n![training curves](training_curves.png)",
        )
    )
    summary += rows

    section(2, "The same CNN on corrupted digits: adaptive batch norm")
    table, rows = adaptation_under_shift(model, data, out, log=log)
    sections.append(
        (
            "Covariate shift: batch norm adaptation",
            table + "\n\n![accuracy under shift](accuracy_under_shift.png)",
        )
    )
    summary += rows

    section(3, "Folding its batch norms into the convolutions")
    table, rows = fold_and_time(model, data.x_test, out, repeats=2 if quick else 5, log=log)
    sections.append(("Folded batch norm: faster inference", table))
    summary += rows

    section(4, "The linter on a model with classic mistakes")
    table, rows = lint_flawed_model(log=log)
    sections.append(("Linting: mistakes found before training", table))
    summary += rows

    section(5, "A short keras-tuner search over dropout rates and normalization")
    table, rows = short_search(
        data, out, trials=2 if quick else 6, epochs=2 if quick else 30, quick=quick, log=log
    )
    sections.append(("Tuning: regularization as a search space", table))
    summary += rows

    section(6, "Recurrent regularization on digits read row by row")
    # 100 epochs: the regularized LSTMs reach their best validation loss late
    # (epochs 76-116 in docs/BENCHMARKS.md), so a shorter run compares them unfinished.
    settings = dict(epochs=3, seeds=(0,), units=16) if quick else dict(epochs=100, seeds=(0,))
    # No dropout, Keras's recurrent_dropout, and kreg's recipe (the winner of
    # bench/char_lm.py); kreg's weight drop alone is in bench/recurrent_regularization.py.
    variants = [name for name in recurrent_variants(0.25, 1) if "WeightDropLSTM" not in name]
    results = recurrent_regularization_study(log=log, variants=variants, **settings)
    table = summarize(results)
    sections.append(("Recurrent regularization", table))
    best = min(results, key=lambda r: r.best_val_loss)
    summary.append(("recurrent: lowest val loss", f"{best.variant} ({best.best_val_loss:.4f})"))

    summary_table = "| what | result |\n| --- | --- |\n" + "\n".join(
        f"| {what} | {result} |" for what, result in summary
    )
    log("\nSummary\n" + summary_table)
    report = out / "report.md"
    report.write_text(
        "# kreg demo\n\n"
        f"Backend {keras.backend.backend()}, {time.perf_counter() - started:.0f} s"
        + (" (--quick: tiny settings, numbers not meaningful)" if quick else "")
        + ".\n\n## Summary\n\n"
        + summary_table
        + "\n\n"
        + "\n\n".join(f"## {title}\n\n{body}" for title, body in sections)
        + "\n"
    )
    log(f"\nwrote {report}")
    return summary
