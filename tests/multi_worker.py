"""Runs a test function in several worker processes that form one TensorFlow cluster.

`tf.distribute.MultiWorkerMirroredStrategy` is how a Keras user trains on several
machines: one process per machine, each told the whole cluster and its own place
in it by the `TF_CONFIG` environment variable, read when the strategy is created
(`tensorflow/python/distribute/cluster_resolver/tfconfig_cluster_resolver.py`). A test reproduces that on one machine with one process per
worker, each listening on its own loopback port:

    import multi_worker

    def train(epochs):                       # module level, in the test file
        import tensorflow as tf
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        ...
        return {"index": multi_worker.worker_index(), "weights": model.get_weights()}

    def test_training_is_the_same_on_both_workers():
        first, second = multi_worker.run_workers(train, kwargs={"epochs": 2})

Each worker loads the function's file by its path and calls the function with
`kwargs`; what it returns comes back through pickle (return plain data: numbers,
strings, NumPy arrays, lists and dicts of them). A worker that fails makes
`run_workers` stop the others (they would wait forever for it in the next
all-reduce) and raise `WorkerError` with the failed worker's output.
"""

import importlib.util
import inspect
import json
import os
import pathlib
import pickle
import socket
import subprocess
import sys
import tempfile
import time

TESTS = pathlib.Path(__file__).resolve().parent
REPOSITORY = TESTS.parent


class WorkerError(RuntimeError):
    """A worker process failed, timed out, or returned nothing."""


def worker_index():
    """This worker's index in the cluster (0 is the chief), from `TF_CONFIG`."""
    return json.loads(os.environ["TF_CONFIG"])["task"]["index"]


def num_workers():
    """How many workers the cluster has, from `TF_CONFIG`."""
    return len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"])


def run_workers(function, num_workers=2, kwargs=None, timeout=300, env=None):
    """Calls `function(**kwargs)` in `num_workers` processes of one loopback cluster.

    Args:
        function: A function defined at module level of a `.py` file (each worker
            loads that file by path, so it must not need pytest's fixtures), or
            `"path/to/file.py:name"`.
        num_workers: Number of worker processes (the cluster's size).
        kwargs: Keyword arguments for `function`; they travel by pickle.
        timeout: Seconds for the whole run; workers still running are killed.
        env: Extra environment variables for every worker.

    Returns:
        The workers' return values, in worker-index order.

    Raises:
        WorkerError: A worker exited with an error or the run timed out; the
            message holds the end of that worker's output.
    """
    path, name = _locate(function)
    ports = _free_loopback_ports(num_workers)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    with tempfile.TemporaryDirectory(prefix="kreg-workers-") as folder:
        folder = pathlib.Path(folder)
        arguments = folder / "kwargs.pickle"
        arguments.write_bytes(pickle.dumps(dict(kwargs or {})))
        workers = []
        for index in range(num_workers):
            worker_env = dict(os.environ)
            worker_env.update(
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
                KERAS_BACKEND="tensorflow",  # the strategy is TensorFlow's
                CUDA_VISIBLE_DEVICES="-1",  # one CPU device per worker, like a test machine
                TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join(
                    [str(TESTS), str(REPOSITORY)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
                ),
            )
            worker_env.update(env or {})
            log = open(folder / f"worker-{index}.log", "wb")  # noqa: SIM115  (closed below)
            command = [
                sys.executable,
                __file__,
                str(path),
                name,
                str(arguments),
                str(folder / f"result-{index}.pickle"),
            ]
            workers.append(
                (
                    subprocess.Popen(command, env=worker_env, stdout=log, stderr=subprocess.STDOUT),
                    log,
                )
            )
        try:
            _wait(workers, folder, timeout)
        finally:
            for process, log in workers:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                log.close()
        return [
            pickle.loads((folder / f"result-{index}.pickle").read_bytes())
            for index in range(num_workers)
        ]


def run_isolated(function, env, kwargs=None, timeout=300):
    """Calls `function(**kwargs)` in one fresh process with `env` added to its
    environment, and returns what it returns. For settings read once per process
    (`KERAS_BACKEND`, `XLA_FLAGS`) that the test process already fixed."""
    return run_workers(function, num_workers=1, kwargs=kwargs, timeout=timeout, env=env)[0]


def _locate(function):
    if isinstance(function, str):
        path, _, name = function.rpartition(":")
        if not path or not name:
            raise ValueError(
                f"Expected `function` as 'path/to/file.py:name'. Received: {function!r}"
            )
        return pathlib.Path(path).resolve(), name
    if function.__qualname__ != function.__name__:
        raise ValueError(
            f"`function` must be defined at module level (workers load it by name). "
            f"Received: {function.__qualname__}"
        )
    return pathlib.Path(inspect.getfile(function)).resolve(), function.__name__


def _free_loopback_ports(count):
    """Ports the OS has just handed out; all are held until all are chosen, so
    they differ (another process could still take one before a worker binds it)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait(workers, folder, timeout):
    deadline = time.monotonic() + timeout
    while True:
        codes = [process.poll() for process, _ in workers]
        failed = [index for index, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            index = failed[0]
            raise WorkerError(
                f"worker {index} exited with code {codes[index]}:\n{_tail(folder, index)}"
            )
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            running = [index for index, code in enumerate(codes) if code is None]
            raise WorkerError(
                f"workers {running} still running after {timeout} s; worker {running[0]}'s output:\n"
                f"{_tail(folder, running[0])}"
            )
        time.sleep(0.2)


def _tail(folder, index, characters=6000):
    text = (folder / f"worker-{index}.log").read_bytes().decode(errors="replace")
    return text[-characters:]


def _worker_main(path, name, arguments, result):
    spec = importlib.util.spec_from_file_location(f"_kreg_worker_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    value = getattr(module, name)(**pickle.loads(pathlib.Path(arguments).read_bytes()))
    # Written whole, then renamed: the parent never reads half a result.
    partial = pathlib.Path(result + ".partial")
    partial.write_bytes(pickle.dumps(value))
    os.replace(partial, result)


if __name__ == "__main__":
    _worker_main(*sys.argv[1:])
