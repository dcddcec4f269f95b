"""The multi-worker harness itself: two processes form one cluster and all-reduce."""

import pytest

import multi_worker

pytestmark = pytest.mark.integration


def _all_reduce_of_worker_indices(offset):
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    value = strategy.reduce(
        tf.distribute.ReduceOp.SUM,
        strategy.run(lambda: tf.constant(float(multi_worker.worker_index() + offset))),
        axis=None,
    )
    return {
        "index": multi_worker.worker_index(),
        "workers": multi_worker.num_workers(),
        "replicas": strategy.num_replicas_in_sync,
        "sum": float(value),
    }


def _fails_on_worker_one():
    if multi_worker.worker_index() == 1:
        raise ValueError("worker one's own message")
    return "worker zero"


def test_two_workers_form_one_cluster_and_all_reduce():
    results = multi_worker.run_workers(
        _all_reduce_of_worker_indices, kwargs={"offset": 10}, timeout=240
    )
    assert [r["index"] for r in results] == [0, 1]
    for result in results:
        assert result["workers"] == 2
        assert result["replicas"] == 2
        assert result["sum"] == 10 + 11  # both workers' values, on both workers


def test_a_failing_worker_raises_with_its_message():
    with pytest.raises(multi_worker.WorkerError, match="worker one's own message"):
        multi_worker.run_workers(_fails_on_worker_one, timeout=120)


def test_nested_functions_are_refused():
    def nested():
        return 1

    with pytest.raises(ValueError, match="module level"):
        multi_worker.run_workers(nested)
