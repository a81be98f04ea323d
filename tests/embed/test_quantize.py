"""The block quantisation of the outlier-sensitive MatMuls, on a small graph (fast; the real model's recipe is
checked against PyTorch in test_onnx.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import ROOT


def _matmul_model(path: Path, weights: np.ndarray) -> None:
    """A graph of one MatMul by a constant: x [n, K] @ W [K, N]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/layer.1/attention/output/dense/MatMul")],
        "one-matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_block_quantised_matmul_keeps_activation_outliers(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from qa.embed.onnx import BLOCK, _block_quantize

    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, (3 * BLOCK, 64))
    path = tmp_path / "m.onnx"
    _matmul_model(path, weights)
    _block_quantize(str(path), ["/layer.1/attention/output/dense/MatMul"])
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["MatMulNBits"]

    # activations with one outlier channel, as transformer layers have: a per-tensor int8 scale would flatten the
    # other channels to a few levels; a scale per block of BLOCK keeps them
    x = rng.normal(0, 1, (15, 3 * BLOCK)).astype(np.float32)
    x[:, 7] *= 60
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = x @ weights.astype(np.float32)
    cosines = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() > 0.999


def test_block_quantising_leaves_the_process_logging_alone(tmp_path: Path) -> None:
    # onnxruntime's quantiser calls logging.basicConfig(level=INFO) when imported, which would print every later
    # log line of a process whose logging was not configured yet
    path = tmp_path / "m.onnx"
    _matmul_model(path, np.ones((256, 8)))
    code = ("import logging, sys\n"
            "from qa.embed.onnx import _block_quantize\n"
            f"_block_quantize({str(path)!r}, ['/layer.1/attention/output/dense/MatMul'])\n"
            "root = logging.getLogger()\n"
            "print(len(root.handlers), root.level)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    import logging

    assert out.stdout.split() == ["0", str(logging.WARNING)]
    assert out.stderr == ""


def test_split_channels_keep_an_outlier_channel_out_of_the_int8_scale(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from qa.embed.onnx import _quantize_per_tensor, _split_channels

    rng = np.random.default_rng(1)
    weights = rng.normal(0, 0.05, (384, 64))
    source, split = tmp_path / "m.onnx", tmp_path / "split.onnx"
    _matmul_model(source, weights)
    floats = _split_channels(str(source), str(split), {"/layer.1/attention/output/dense/MatMul": [7]})
    assert floats == ["/layer.1/attention/output/dense/MatMul_outliers"]
    x = rng.normal(0, 1, (15, 384)).astype(np.float32)
    x[:, 7] *= 60  # one outlier channel, as the feed-forward down-projections' inputs have

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    expected = x @ weights.astype(np.float32)
    assert np.allclose(run(split), expected, atol=1e-4)  # in float32 the two halves add up to the MatMul

    def cosines(got: np.ndarray) -> np.ndarray:
        return (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)

    quantised = {}
    for name, path, excluded in (("split", split, floats), ("plain", source, [])):
        quantised[name] = tmp_path / f"{name}.int8.onnx"
        _quantize_per_tensor(str(path), str(quantised[name]), excluded)
    ops = [n.op_type for n in onnx.load(str(quantised["split"])).graph.node]
    assert ops.count("MatMul") == 1 and ops.count("MatMulInteger") == 1  # the outlier in float, the rest int8
    # one int8 scale over the outlier flattens the other channels; with the outlier apart they keep their levels
    assert cosines(run(quantised["split"])).min() > 0.999
    assert cosines(run(quantised["plain"])).min() < 0.995
