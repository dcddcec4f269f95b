"""The inference cost of AdaptiveBatchNormalization in its default "running" mode.

Four conv + batch norm blocks on a batch of 64 inputs of 32x32x16, built twice
with the same weights: once with `keras.layers.BatchNormalization`, once with
`kreg.layers.AdaptiveBatchNormalization` (`test_time_mode="running"`). Prints the
time of `predict_on_batch` of the second over the first, with and without
`jit_compile`, rounds interleaved (the median of `--rounds` ratios, and the
ratio of each model's best round: on a shared machine other jobs only ever add
time, so the best rounds are the least disturbed), on the backend
`KERAS_BACKEND` selects. A drop-in should cost nothing: target 1.03x.

    KERAS_BACKEND=tensorflow python bench/adaptation_running_cost.py
    KERAS_BACKEND=jax python bench/adaptation_running_cost.py
    KERAS_BACKEND=torch python bench/adaptation_running_cost.py --rounds 20
"""

import argparse
import statistics
import time

import _common  # noqa: F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402


def build(batch_norm):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 16))
    x = inputs
    for _ in range(4):
        x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(batch_norm()(x))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def seconds(model, x, calls):
    started = time.perf_counter()
    for _ in range(calls):
        model.predict_on_batch(x)
    return (time.perf_counter() - started) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--calls", type=int, default=10, help="predict_on_batch calls per round and model"
    )
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(size=(64, 32, 32, 16)).astype("float32")
    print(f"backend {keras.backend.backend()}; {args.rounds} rounds of {args.calls} calls")
    print(
        "| jit_compile | BatchNormalization, ms | AdaptiveBatchNormalization (running), ms "
        "| ratio (median) | ratio (best rounds) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for jit in (False, True):
        keras_model, kreg_model = (
            build(keras.layers.BatchNormalization),
            build(kreg.layers.AdaptiveBatchNormalization),
        )
        kreg_model.set_weights(keras_model.get_weights())
        for model in (keras_model, kreg_model):
            model.compile(jit_compile=jit)
            model.predict_on_batch(x)  # traced / compiled
        np.testing.assert_allclose(
            kreg_model.predict_on_batch(x), keras_model.predict_on_batch(x), rtol=1e-4, atol=1e-5
        )
        ratios, times = [], ([], [])
        for round_ in range(args.rounds):
            pair = (keras_model, kreg_model) if round_ % 2 == 0 else (kreg_model, keras_model)
            measured = {id(m): seconds(m, x, args.calls) for m in pair}
            times[0].append(measured[id(keras_model)])
            times[1].append(measured[id(kreg_model)])
            ratios.append(measured[id(kreg_model)] / measured[id(keras_model)])
        print(
            f"| {jit} | {1e3 * statistics.median(times[0]):.2f} | {1e3 * statistics.median(times[1]):.2f} "
            f"| {statistics.median(ratios):.3f}x | {min(times[1]) / min(times[0]):.3f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
