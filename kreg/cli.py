"""The `kreg` command: `kreg demo`, `kreg diagnose MODEL.keras`, `kreg fold IN OUT`.

Exit codes: 0 success; 1 `kreg diagnose` found an error, or `kreg fold`'s check
of the folded model failed; 2 every other failure: bad input or I/O (usage, a
missing file, a file that is not a loadable Keras model, a model kreg cannot
read, an output that would overwrite the input or cannot be written) and any
unexpected error. Each prints one line on stderr, never a traceback: exit code 1
stays what a CI gate reads as "errors found".
"""

import argparse
import importlib
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import textwrap
import time
import warnings
import zipfile

USAGE_ERROR = 2
# The longest error line the command prints; longer messages end at a word.
_MESSAGE_WIDTH = 300
# What one word counts for against that width: a long path or URL is kept whole
# and leaves room for the words after it (what is wrong with the file).
_LONGEST_WORD = 40


class _InputError(Exception):
    """Bad input: reported in one line with exit code 2."""


def _demo(args):
    from kreg import demo

    demo.run(quick=args.quick, out=args.out)
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}")
    return value


def _check_model_path(path, must_exist=True):
    if path.suffix != ".keras":
        raise _InputError(f"{path}: expected a .keras file (Keras 3 format)")
    if must_exist and not path.exists():
        raise _InputError(f"{path}: no such file")
    if must_exist and path.is_dir():
        raise _InputError(f"{path}: is a folder; give the path of a .keras file")
    if must_exist and not zipfile.is_zipfile(path):
        raise _InputError(f"{path}: not a Keras model (a .keras file is a zip archive)")


def _shortened(text, placeholder=" ..."):
    """`text` on one line, ended at a word once it is longer than `_MESSAGE_WIDTH`.

    Words are never cut or dropped from the start (`textwrap.shorten` drops a
    word longer than the width, such as a deep path, and splits at hyphens), and
    each counts for at most `_LONGEST_WORD` characters.
    """
    words = text.split()
    costs = [min(len(word), _LONGEST_WORD) for word in words]
    if sum(costs) + len(costs) - 1 <= _MESSAGE_WIDTH:
        return " ".join(words)
    kept, used = [], len(placeholder)
    for word, cost in zip(words, costs):
        used += cost + (1 if kept else 0)
        if kept and used > _MESSAGE_WIDTH:
            break
        kept.append(word)
    return " ".join(kept) + placeholder


# What Keras's safe mode refuses besides a Lambda layer, as its messages name it:
# a Python lambda anywhere in the config (keras/src/saving/serialization_lib.py),
# a `TFSMLayer` (keras/src/export/tfsm_layer.py), a pickled `torch.nn.Module`
# (keras/src/utils/torch_utils.py).
_UNSAFE_CONTENT = re.compile(
    r"Requested the deserialization of (an? .+?)(?: whose|,| which| via|\.)"
)


def _load_model(path, imports, trust_lambda=False):
    """Loads a .keras model, with kreg's layers (and `imports`) registered."""
    _check_model_path(path)
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise _InputError(f"--import {module}: {error}") from None
    import keras

    import kreg  # noqa: F401  (registers kreg's layers for loading)

    try:
        return keras.saving.load_model(path, safe_mode=not trust_lambda)
    except Exception as error:  # noqa: BLE001  (any failure here is the file's)
        message = str(error)
        if "deserialization of a `Lambda` layer" in message:
            raise _InputError(
                f"{path}: holds a Lambda layer whose Python code Keras does not load by "
                "default (loading it runs code from the file); if you trust the file, "
                "pass --trust-lambda"
            ) from None
        unsafe = _UNSAFE_CONTENT.search(message)
        if unsafe:
            raise _InputError(
                f"{path}: holds {unsafe.group(1)}, which Keras does not load by default "
                "(loading it runs code from the file); if you trust the file, pass "
                "--trust-lambda"
            ) from None
        missing = re.search(r"Could not (?:locate|deserialize) (\w+) '([^']+)'", message)
        if missing:
            raise _InputError(
                f"{path}: needs the custom {missing.group(1)} {missing.group(2)!r}, which "
                "is not registered; pass --import MODULE for the module that defines it"
            ) from None
        first_line = (message.splitlines() or [type(error).__name__])[0]
        raise _InputError(f"{path}: cannot load the model: {first_line}") from None


def _diagnose(args):
    model = _load_model(args.model, args.imports, args.trust_lambda)
    import kreg

    try:
        findings = kreg.diagnose(model, batch_size=args.batch_size)
    except (TypeError, ValueError) as error:  # a model diagnose cannot read, and why
        raise _InputError(f"{args.model}: {error}") from None
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    if args.json:
        report = {
            "model": str(args.model),
            "counts": counts,
            "findings": [f.to_dict() for f in findings],
        }
        print(json.dumps(report, indent=2))
    else:
        print(_findings_table(args.model, findings, counts))
    return 1 if counts["error"] else 0


def _findings_table(path, findings, counts):
    summary = ", ".join(
        f"{n} {severity}{'s' if n != 1 and severity != 'info' else ''}"
        for severity, n in counts.items()
    )
    lines = [f"{path}: {summary}" if findings else f"{path}: no findings"]
    if findings:
        rule_width = max(len(f.rule) for f in findings)
        lines += ["", f"{'SEVERITY':<9} {'RULE':<{rule_width}}  LAYERS"]
        for finding in findings:
            lines.append(
                f"{finding.severity:<9} {finding.rule:<{rule_width}}  {', '.join(finding.layers)}"
            )
            indent = " " * 10
            for text in (finding.message, f"fix: {finding.fix}"):
                lines += textwrap.wrap(
                    text, 100, initial_indent=indent, subsequent_indent=indent + "  "
                )
    return "\n".join(lines)


def _check_writable(output, input_path, force):
    """Refuses an output that would overwrite the input, or that cannot be
    written, before any work is done."""
    _check_model_path(output, must_exist=False)
    if output.is_dir():
        raise _InputError(f"{output}: is a folder; give the path of the .keras file to write")
    if not output.parent.is_dir():
        raise _InputError(f"{output}: folder {output.parent} does not exist")
    same = output.resolve() == input_path.resolve() or (
        output.exists() and input_path.exists() and os.path.samefile(output, input_path)
    )
    if same and not force:
        raise _InputError(
            f"{output}: is the input model; write the folded model elsewhere, or pass "
            "--force to replace the input"
        )
    if output.exists() and not os.access(output, os.W_OK):
        raise _InputError(f"{output}: cannot be written (permission denied)")
    try:  # the only sure test: create a file there
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=".kreg-", suffix=".keras"):
            pass
    except OSError as error:
        raise _InputError(
            f"{output}: cannot write to folder {output.parent} ({error.strerror})"
        ) from None


def _save_atomically(model, output):
    """Saves to a temporary file beside `output`, then renames it: an I/O failure
    (disk full, folder gone) never leaves a half-written model at `output`."""
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=output.parent, prefix=".kreg-", suffix=".keras"
        )
        os.close(descriptor)
    except OSError as error:
        raise _InputError(
            f"{output}: cannot save the folded model ({error.strerror or error})"
        ) from None
    try:
        model.save(temporary)
        os.replace(temporary, output)
    except OSError as error:
        raise _InputError(
            f"{output}: cannot save the folded model ({error.strerror or error})"
        ) from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _fold(args):
    _check_model_path(args.output, must_exist=False)
    _check_model_path(args.input)
    _check_writable(args.output, args.input, args.force)
    model = _load_model(args.input, args.imports, args.trust_lambda)
    import kreg
    from kreg.fold import FoldVerificationError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report lists what stayed, with reasons
        try:
            folded, report = kreg.fold_batch_norms(model, return_report=True, verify=args.verify)
        except FoldVerificationError as error:
            print(f"kreg fold: error: {_shortened(str(error))}", file=sys.stderr)
            return 1  # a fold kreg got wrong: nothing written
        except (TypeError, ValueError) as error:
            raise _InputError(f"{args.input}: {error}") from None
    _save_atomically(folded, args.output)
    print(report)
    print(f"wrote {args.output}")
    _print_speed_up(model, folded, args.batch_size)
    return 0


def _print_speed_up(model, folded, batch_size, seconds=1.0):
    """Times `predict_on_batch` of both models, alternating, after a warm-up call
    (which traces/compiles); prints the medians, their ratio and the difference."""
    import numpy as np

    from kreg import model_graph

    batch = model_graph.random_inputs(model, batch_size)
    expected, actual = model.predict_on_batch(batch), folded.predict_on_batch(batch)
    difference = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(e)), initial=0.0))
        for a, e in zip(_flat(actual), _flat(expected))
    )
    times = {"original": [], "folded": []}
    start = time.perf_counter()
    while len(times["folded"]) < 5 or (
        time.perf_counter() - start < seconds and len(times["folded"]) < 200
    ):
        for name, m in (("original", model), ("folded", folded)):
            tick = time.perf_counter()
            m.predict_on_batch(batch)
            times[name].append(time.perf_counter() - tick)
    original, fast = (statistics.median(times[k]) * 1e3 for k in ("original", "folded"))
    print(
        f"original {original:.3f} ms, folded {fast:.3f} ms per batch of {batch_size} "
        f"(median of {len(times['folded'])} predict_on_batch calls): "
        f"{original / fast:.2f}x speed-up; max |difference| {difference:.2e}"
    )


def _flat(outputs):
    if isinstance(outputs, dict):
        return [outputs[key] for key in sorted(outputs)]
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its usage errors on one line (exit code 2, as argparse's)."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser():
    parser = _Parser(prog="kreg", description="Regularization and normalization tools for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="show kreg on data that ships with the install")
    demo.add_argument("--quick", action="store_true", help="a few seconds, for tests")
    demo.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("kreg-demo"),
        help="folder for the report (default: kreg-demo/)",
    )
    demo.set_defaults(handler=_demo)

    imports = dict(
        action="append", default=[], dest="imports", metavar="MODULE",
        help="import MODULE first, to register the custom layers the model uses (repeatable)",
    )  # fmt: skip
    # `safe_mode=False` (keras/src/saving/serialization_lib.py) lifts every check of
    # Keras's safe mode, not only the one on Lambda layers: the help says all it loads.
    trust_lambda = dict(
        action="store_true",
        help="turn off Keras's safe mode: load Lambda layers and other Python lambdas, "
        "TFSMLayer SavedModels and pickled torch modules, whose code runs as the model "
        "loads (only for files you trust)",
    )
    diagnose = commands.add_parser(
        "diagnose", help="check a saved model for regularization mistakes",
        description="Check a saved model for regularization and normalization mistakes. "
        "Exit code 1 if any finding is an error (for CI), 0 otherwise.",
    )  # fmt: skip
    diagnose.add_argument("model", type=pathlib.Path, help="a .keras model file")
    diagnose.add_argument(
        "--batch-size", type=_positive_int, default=None, metavar="N",
        help="the training batch size, to check batch norm against tiny batches",
    )  # fmt: skip
    diagnose.add_argument("--json", action="store_true", help="print the findings as JSON")
    diagnose.add_argument("--import", **imports)
    diagnose.add_argument("--trust-lambda", **trust_lambda)
    diagnose.set_defaults(handler=_diagnose)

    fold = commands.add_parser(
        "fold", help="fold batch norms into the conv/dense layers before them",
        description="Fold batch norms away (kreg.fold_batch_norms), save the result, "
        "print the report and the measured inference speed-up.",
    )  # fmt: skip
    fold.add_argument("input", type=pathlib.Path, help="the .keras model to fold")
    fold.add_argument("output", type=pathlib.Path, help="where to save the folded .keras model")
    fold.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="N",
        help="batch size of the timed predictions (default: 32)",
    )  # fmt: skip
    fold.add_argument(
        "--force", action="store_true", help="allow OUT to be IN (replace the input model)"
    )
    fold.add_argument(
        "--no-verify", dest="verify", action="store_false",
        help="skip the check of the folded model's outputs against the original's",
    )  # fmt: skip
    fold.add_argument("--import", **imports)
    fold.add_argument("--trust-lambda", **trust_lambda)
    fold.set_defaults(handler=_fold)
    return parser


def main(argv=None):
    # Before anything imports TensorFlow (`kreg/__init__.py` does the same for the
    # installed command, which imports the package first); the user's value wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except _InputError as error:
        print(f"kreg {args.command}: error: {_shortened(str(error))}", file=sys.stderr)
        return USAGE_ERROR
    except BrokenPipeError:  # `kreg diagnose ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # noqa: BLE001  (one line, never exit code 1)
        message = _shortened(f"{type(error).__name__}: {error}")
        print(f"kreg {args.command}: error: {message}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
