"""What `pip install kreg` downloads and what `import kreg` costs, against Keras alone.

Download size: `pip download` of each requirement set into an empty folder (from
pip's cache or index, as a user's pip would fetch it), summed; the ratios are to
`keras` alone. Import time: a fresh interpreter per import, `keras` and `kreg`
alternated round by round on each backend; medians and the ratio. The
interpreter's own start (`python -c pass`) is measured the same way and
subtracted.

    python bench/install_and_import.py                   # both measurements
    python bench/install_and_import.py --skip-download --rounds 9
"""

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")


def download_megabytes(requirements):
    """Size of everything pip downloads to install `requirements`, in MB."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "-d",
                folder,
                *requirements,
            ],
            check=True,
        )
        files = list(pathlib.Path(folder).iterdir())
        return sum(f.stat().st_size for f in files) / 1e6, len(files)


def build_wheel(folder):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", folder, str(REPOSITORY)],
        check=True, capture_output=True,
    )  # fmt: skip
    return next(pathlib.Path(folder).glob("kreg-*.whl"))


def import_seconds(statement, backend):
    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", statement],
        check=True,
        env=env,
        capture_output=True,
        cwd=tempfile.gettempdir(),
    )
    return time.perf_counter() - start


def tensorflow_imported(backend):
    statement = "import sys, kreg; print('tensorflow' in sys.modules)"
    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", statement], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip() == "True"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-download", action="store_true")
    parser.add_argument("--skip-import", action="store_true")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]} on {sys.platform}")

    if not args.skip_download:
        with tempfile.TemporaryDirectory() as folder:
            wheel = build_wheel(folder)
            sets = {
                "keras (alone)": ["keras==3.15.1"],
                "kreg (core)": [str(wheel)],
                "kreg[tensorflow]": [f"{wheel}[tensorflow]"],
                "kreg[all] (what `pip install kreg` brought before the extras)": [f"{wheel}[all]"],
            }
            sizes = {name: download_megabytes(requirements) for name, requirements in sets.items()}
        base = sizes["keras (alone)"][0]
        print("\n| install | files | download (MB) | vs keras alone |\n| --- | --- | --- | --- |")
        for name, (megabytes, count) in sizes.items():
            print(f"| {name} | {count} | {megabytes:.1f} | {megabytes / base:.2f}x |")

    if not args.skip_import:
        print(
            "\n| backend | python -c pass (ms) | import keras (ms) | import kreg (ms) | kreg / keras | TensorFlow imported by kreg |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for backend in BACKENDS:
            times = {"pass": [], "keras": [], "kreg": []}
            for _ in range(args.rounds):
                for name, statement in (
                    ("pass", "pass"),
                    ("keras", "import keras"),
                    ("kreg", "import kreg"),
                ):
                    times[name].append(import_seconds(statement, backend))
            start, keras_time, kreg_time = (
                statistics.median(times[k]) * 1e3 for k in ("pass", "keras", "kreg")
            )
            keras_net, kreg_net = keras_time - start, kreg_time - start
            print(
                f"| {backend} | {start:.0f} | {keras_net:.0f} | {kreg_net:.0f} | {kreg_net / keras_net:.2f}x "
                f"| {'yes' if tensorflow_imported(backend) else 'no'} |"
            )
        print(f"(medians of {args.rounds} fresh interpreters each, start-up subtracted)")


if __name__ == "__main__":
    main()
