"""examples/mini_mnist.py runs as a user would run it: trains from Python, predicts, plots and
exports to ONNX, checked by ONNX Runtime."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_mini_mnist_example_runs_end_to_end(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "mini_mnist.py"), "--epochs",
                          "1", "--out", str(tmp_path / "ex")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    predicted = re.search(r"predicted (\[.*\])\nlabels    (\[.*\])", out.stdout)
    assert predicted is not None, out.stdout
    right = sum(a == b for a, b in zip(json.loads(predicted[1]), json.loads(predicted[2]),
                                       strict=True))
    assert right >= 10  # 12 test digits after one epoch on mini MNIST (94.8 % test accuracy)
    assert (tmp_path / "ex" / "predictions.png").stat().st_size > 10_000
    difference = float(re.search(r"differs from distnn by at most (\S+)", out.stdout)[1])
    assert difference <= 1e-5 and (tmp_path / "ex" / "model.onnx").is_file()
