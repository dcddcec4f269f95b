"""`kreg.fold_batch_norms` on real architectures: every `keras.applications` family,
keras-hub ResNets (plain and pre-activation), all `weights=None` with randomized
batch norm statistics (trained-looking, so a wrong fold shows).

For each model: batch norms folded backward / forward, kept (with the reasons,
counted), the verified max |original - folded| and its tolerance, the time of
`fold_batch_norms` itself, and `predict` time of the folded model against the
original and against the same graph with *every* batch norm call removed (the
limit folding can reach; built with `kreg.model_graph.rebuild`). Timings are
interleaved round by round in one process, order shuffled, minimum and median.

    python bench/fold_real_models.py                     # every family, 96x96 inputs
    python bench/fold_real_models.py --models ResNet50V2 MobileNetV3Small --rounds 9
"""

import argparse
import collections
import re
import statistics
import time
import warnings

from _common import interleaved_predict_times  # noqa: E402  (first: it quiets TensorFlow)
from _common import randomize_batch_norms  # noqa: E402  (first: it quiets TensorFlow)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402
from kreg import model_graph  # noqa: E402

# One model per keras.applications family (VGG has no batch norm: it checks that
# nothing is touched), with the smallest input each family accepts at or above 96.
APPLICATIONS = {
    "ConvNeXtTiny": 96, "DenseNet121": 96, "EfficientNetB0": 96, "EfficientNetV2B0": 96,
    "InceptionV3": 96, "InceptionResNetV2": 96, "MobileNet": 96, "MobileNetV2": 96,
    "MobileNetV3Small": 96, "MobileNetV3Large": 96, "NASNetMobile": 96, "ResNet50": 96,
    "ResNet50V2": 96, "VGG16": 96, "Xception": 96,
}  # fmt: skip


def keras_hub_models():
    """keras-hub ResNets built from arguments: plain and pre-activation (v2) backbones
    and an image classifier task on one; `{}` if keras-hub is not installed."""
    try:
        import keras_hub
    except ImportError:
        return {}

    def backbone(pre_activation):
        return keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256], stackwise_num_blocks=[2, 2, 2],
            stackwise_num_strides=[1, 2, 2], block_type="bottleneck_block",
            use_pre_activation=pre_activation, image_shape=(96, 96, 3),
        )  # fmt: skip

    return {
        "hub ResNetBackbone": lambda: backbone(False),
        "hub ResNetBackbone pre-act": lambda: backbone(True),
        "hub ResNetImageClassifier": lambda: keras_hub.models.ResNetImageClassifier(
            backbone=backbone(False), num_classes=10
        ),
    }


def without_batch_norm(model):
    """The same graph with every batch norm call replaced by its input (nested
    models included): the cost floor of a folded model."""
    if not model_graph.is_graph_model(model):
        return model

    def call(original, args, kwargs):
        if isinstance(original.layer, keras.layers.BatchNormalization):
            return args[0] if args else kwargs[original.tensor_keywords[0]]
        operation = original.operation
        if model_graph.is_graph_model(operation):
            operation = without_batch_norm(operation)
        return operation(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        layers = [
            layer
            for layer in model.layers
            if not isinstance(layer, keras.layers.BatchNormalization)
        ]
        return keras.Sequential([keras.Input(batch_shape=model.inputs[0].shape), *layers])
    return model_graph.rebuild(model_graph.read_graph(model), call)


def summarize_reasons(skipped):
    """`kind xN` for the reasons batch norms were kept, layer names left out."""
    kinds = collections.Counter()
    for _, reason in skipped:
        after = re.match(r"it follows `[^`]*` \((\w+)\)", reason)
        kinds[
            f"after {after.group(1)}"
            if after
            else re.sub(r"`[^`]*`", "*", reason.split(";")[0])[:70]
        ] += 1
    return ", ".join(f"{kind} x{n}" for kind, n in kinds.most_common())


def main():
    hub = keras_hub_models()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(APPLICATIONS) + list(hub))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(
        f"backend={keras.backend.backend()} keras={keras.__version__}, predict on {args.batches} "
        f"batches of {args.batch}, {args.rounds} rounds, jit_compile=False",
        flush=True,
    )
    rows, rng = [], np.random.default_rng(1)
    for name in args.models:
        if name in APPLICATIONS:
            size = APPLICATIONS[name]
            original = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
        else:
            original = hub[name]()
        randomize_batch_norms(original)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folded, report = kreg.fold_batch_norms(original, return_report=True)
        fold_seconds = time.perf_counter() - start
        limit = without_batch_norm(original)
        x = model_graph.random_inputs(original, batch_size=args.batch * args.batches, seed=2)
        variants = {"original": original, "folded": folded, "no BN": limit}
        for model in variants.values():
            model.compile(jit_compile=False)
        times = interleaved_predict_times(variants, x, args.batch, args.rounds, rng)
        row = dict(
            name=name,
            batch_norms=len(model_graph.batch_norm_layers(original)),
            backward=len(report.folded),
            forward=len(report.forward_folded),
            kept=len(report.skipped),
            reasons=summarize_reasons(report.skipped),
            difference=report.max_difference,
            tolerance=report.tolerance,
            fold_seconds=fold_seconds,
            times=times,
        )
        rows.append(row)
        print(
            f"{name}: {row['batch_norms']} BN, folded {row['backward']}+{row['forward']}, kept "
            f"{row['kept']} ({row['reasons'] or '-'}), max diff {row['difference']:.1e} "
            f"(tol {row['tolerance']:.1e}), fold {fold_seconds:.1f}s, folded/original "
            f"{min(times['folded']) / min(times['original']):.3f}x, folded/no-BN "
            f"{min(times['folded']) / min(times['no BN']):.3f}x",
            flush=True,
        )

    print(
        "\n| model | BN layers | folded backward | forward | kept (reasons) | max diff (tolerance) "
        "| fold s | min folded/original | min folded/no-BN | median folded/no-BN |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        t = row["times"]
        print(
            f"| {row['name']} | {row['batch_norms']} | {row['backward']} | {row['forward']} | "
            f"{row['kept']} ({row['reasons'] or '-'}) | {row['difference']:.1e} ({row['tolerance']:.1e}) | "
            f"{row['fold_seconds']:.1f} | {min(t['folded']) / min(t['original']):.3f}x | "
            f"{min(t['folded']) / min(t['no BN']):.3f}x | "
            f"{statistics.median(t['folded']) / statistics.median(t['no BN']):.3f}x |"
        )


if __name__ == "__main__":
    main()
