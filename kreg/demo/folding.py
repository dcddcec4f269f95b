"""Demo: fold the CNN's batch norms into its convolutions and time inference."""

import time

import numpy as np

from kreg.fold import fold_batch_norms


def _best_time(model, x, repeats):
    model.predict(x, batch_size=256, verbose=0)  # compile once
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(x, batch_size=256, verbose=0)
        times.append(time.perf_counter() - started)
    return min(times)


def fold_and_time(model, x, out, repeats=5, log=print):
    """Returns `(Markdown table, summary rows)`; saves the folded model."""
    folded, report = fold_batch_norms(model, return_report=True)
    difference = float(np.max(np.abs(folded.predict(x, verbose=0) - model.predict(x, verbose=0))))
    x = np.concatenate([x] * max(1, 20000 // len(x)))
    original_time, folded_time = _best_time(model, x, repeats), _best_time(folded, x, repeats)
    path = out / "folded_cnn.keras"
    folded.save(path)
    log(f"  {report}".replace("\n", "\n  "))
    log(f"  wrote {path}")
    table = (
        "| | layers | predict time (best of "
        f"{repeats}, {len(x)} images) |\n| --- | --- | --- |\n"
        f"| original | {len(model.layers)} | {original_time:.3f} s |\n"
        f"| folded | {len(folded.layers)} | {folded_time:.3f} s (speed-up "
        f"{original_time / folded_time:.2f}x) |\n\n"
        f"Largest output difference: {difference:.1e}."
    )
    rows = [
        (
            "fold_batch_norms: pairs folded, speed-up (original / folded time)",
            f"{len(report.folded)}, {original_time / folded_time:.2f}x",
        )
    ]
    return table, rows
