"""distnn from Python, start to finish, on the bundled mini MNIST (no download, no cluster).

    python examples/mini_mnist.py [--epochs 2] [--out runs/example]

1. Train the bundled `quickstart` config with distnn.train: the run `distnn train` makes.
2. Load its best checkpoint with distnn.load and predict the first test images.
3. Plot twelve of them with their predicted class and probability (the `plot` extra,
   matplotlib): OUT/predictions.png.
4. Export the network to ONNX and run it in ONNX Runtime (the `onnx` extra): OUT/model.onnx,
   with the largest difference from distnn's scores.
Steps 3 and 4 are skipped, with a line saying so, when their extra is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

import distnn
from distnn.data import get_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="runs/example")
    args = p.parse_args()
    out = Path(args.out)

    # 1. Train: a bundled config name, a YAML path or a dict, with --set style overrides.
    result = distnn.train("quickstart", overrides=[f"train.epochs={args.epochs}"],
                          run_dir=out / "run")
    print(f"trained: exit code {result.exit_code}, test accuracy "
          f"{result.test['accuracy'] if result.test else None}, {result.checkpoint}")

    # 2. Load and predict: uint8 images (N, H, W, C), normalisation applied by the model.
    model = distnn.load(result.checkpoint)
    test = get_dataset("mini_mnist", "test")
    images, labels = test.read(np.arange(12)), test.labels[:12]
    probabilities = model.predict(images)
    predicted = probabilities.argmax(axis=1)
    print(f"predicted {predicted.tolist()}\nlabels    {labels.tolist()}")

    # 3. Plot them.
    if importlib.util.find_spec("matplotlib") is None:
        print("no matplotlib: skipping the plot (pip install 'distnn[plot]')")
    else:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 6, figsize=(9, 3.4))
        for ax, image, k, prob, label in zip(axes.flat, images, predicted, probabilities,
                                             labels, strict=True):
            ax.imshow(image[..., 0], cmap="gray")
            ax.set_title(f"{model.class_names[k]} {prob[k]:.2f}",
                         color="black" if k == label else "red", fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "predictions.png", dpi=100)
        print(f"wrote {out / 'predictions.png'}")

    # 4. Export to ONNX and check it in ONNX Runtime.
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        print("no onnx/onnxruntime: skipping the export (pip install 'distnn[onnx]')")
        return
    import onnx

    from distnn.export.onnx_graph import check, to_onnx

    graph = to_onnx(model.network, model.normalization, class_names=model.class_names)
    onnx.save(graph, out / "model.onnx")
    difference = check(model.network, model.normalization, graph, images)
    print(f"wrote {out / 'model.onnx'}; ONNX Runtime differs from distnn by at most "
          f"{difference:.2g}")


if __name__ == "__main__":
    main()
