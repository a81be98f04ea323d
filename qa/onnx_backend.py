"""The embedding model's transformer run by ONNX Runtime, int8 dynamically quantised (per channel).

The ONNX file is made once per model and cached: the transformer is exported from PyTorch with the legacy
TorchScript exporter, then its weights are quantised to int8 per output channel by
`onnxruntime.quantization.quantize_dynamic`. Later loads need only onnxruntime, tokenizers and numpy; PyTorch is
imported only to export.

Two layer groups stay float32 in the int8 model: the first transformer layer and the feed-forward
down-projections (input width `intermediate_size`). Their activations have outliers that per-tensor dynamic
activation quantisation handles badly; keeping them float costs about a tenth of the int8 speed-up and lifts the
worst paragraph's cosine to the PyTorch vector from 0.984 to 0.993 on SQuAD dev.

Why the legacy exporter (`dynamo=False`): with torch 2.13 the dynamo exporter needs `onnxscript` (not installed
here), takes ~4x longer and writes the weights to a separate `.onnx.data` file, which makes the atomic
write-then-rename of the cache more fragile; both give the same outputs (max abs diff ~1e-5).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator

import numpy as np

from .embed import TransformerEmbedder, _model_max_tokens, model_fingerprint

log = logging.getLogger(__name__)

CACHE_ENV = "QA_CACHE_DIR"
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.int8-pc-v1.onnx"  # bump the suffix when the quantisation recipe changes
LOCK_FILE = "export.lock"
LOCK_TIMEOUT = 1800.0
EXPORT_TOLERANCE = 1e-3  # max abs difference to PyTorch accepted for the fp32 export
FIRST_LAYER = re.compile(r"/layers?\.0/")


def cache_dir(model_path: str) -> str:
    """Folder of a model's ONNX files: `$QA_CACHE_DIR/<fingerprint>` if set, else `~/.cache/qa/onnx/<fingerprint>`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "qa", "onnx")
    return os.path.join(root, model_fingerprint(model_path))


def _read_config(model_path: str) -> dict:
    """The model folder's config.json."""
    with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def _temporary_path(final: str) -> Iterator[str]:
    """A temporary file name beside `final`, removed unless it was renamed into place."""
    folder, name = os.path.split(final)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp.onnx")
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _export(model_path: str, target: str) -> None:
    """Export the model's transformer (`last_hidden_state`) to a float32 ONNX file, checked against PyTorch."""
    import inspect

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    names = INPUT_NAMES if takes_types else INPUT_NAMES[:2]

    class Transformer(torch.nn.Module):
        """The model with positional inputs and one tensor output, as the exporter wants."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    # a padded example, so the traced graph keeps the attention-mask path
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    example = (ids, mask, torch.zeros_like(ids))[:len(names)]
    axes = {name: {0: "batch", 1: "sequence"} for name in (*names, OUTPUT_NAME)}
    with _temporary_path(target) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings of the legacy exporter
            torch.onnx.export(Transformer().eval(), example, tmp, input_names=list(names),
                              output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
            _check_export(tmp, model, names)
        os.replace(tmp, target)


def _check_export(onnx_path: str, model, names: tuple[str, ...]) -> None:
    """Raise if the exported graph disagrees with PyTorch on a batch of another shape than the example."""
    import onnxruntime as ort
    import torch

    ids = torch.randint(1000, 2000, (3, 37), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[0, 20:] = 0
    mask[2, 5:] = 0
    inputs = dict(zip(names, (ids, mask, torch.zeros_like(ids))))
    expected = model(**inputs).last_hidden_state.numpy()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {k: v.numpy() for k, v in inputs.items()})[0]
    valid = mask.numpy().astype(bool)
    diff = float(np.abs(got - expected)[valid].max())
    if diff > EXPORT_TOLERANCE:
        raise RuntimeError(f"ONNX export of {model.config.name_or_path} differs from PyTorch by {diff:.2g}")


def _float_nodes(onnx_path: str, intermediate_size: int | None) -> list[str]:
    """MatMul nodes kept float32: the first transformer layer and the feed-forward down-projections."""
    import onnx

    model = onnx.load(onnx_path)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or not any(i in shapes for i in node.input):
            continue
        weight = next(shapes[i] for i in node.input if i in shapes)
        if FIRST_LAYER.search(node.name) or (intermediate_size and weight[:1] == (intermediate_size,)):
            keep.append(node.name)
    return keep


def _quantize(source: str, target: str, intermediate_size: int | None) -> None:
    """Dynamic int8 quantisation of a float32 ONNX file: weights per output channel, activations per tensor."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = _float_nodes(source, intermediate_size)
    with _temporary_path(target) as tmp:
        quantize_dynamic(source, tmp, per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=keep)
        os.replace(tmp, target)
    log.info("quantised %s: %d MatMul nodes kept float32", os.path.basename(target), len(keep))


def ensure_onnx_model(model_path: str, quantize: bool = True) -> str:
    """Path of the model's cached ONNX file, exported (and quantised) first if missing; safe across processes."""
    folder = cache_dir(model_path)
    target = os.path.join(folder, INT8_FILE if quantize else FP32_FILE)
    if os.path.exists(target):  # files appear only by rename, so an existing one is complete
        return target
    from filelock import FileLock, Timeout

    os.makedirs(folder, exist_ok=True)
    try:
        with FileLock(os.path.join(folder, LOCK_FILE), timeout=LOCK_TIMEOUT):
            if os.path.exists(target):  # another process made it while we waited
                return target
            fp32 = os.path.join(folder, FP32_FILE)
            if not os.path.exists(fp32):
                started = time.perf_counter()
                log.info("exporting %s to ONNX in %s", model_path, folder)
                _export(model_path, fp32)
                log.info("exported in %.1fs", time.perf_counter() - started)
            if quantize:
                started = time.perf_counter()
                _quantize(fp32, target, _read_config(model_path).get("intermediate_size"))
                log.info("quantised in %.1fs", time.perf_counter() - started)
    except Timeout:
        raise RuntimeError(f"another process holds {folder}/{LOCK_FILE} (waited {LOCK_TIMEOUT:.0f}s)") from None
    return target


def _cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class OnnxEmbedder(TransformerEmbedder):
    """The model's transformer run by ONNX Runtime on the CPU, int8 quantised unless `quantize=False`."""

    backend = "onnx"

    def __init__(self, model_path: str, model_name: str, max_tokens: int | None = None, *, quantize: bool = True,
                 threads: int | None = None):
        import onnxruntime as ort

        config = _read_config(model_path)
        limit = max_tokens or _model_max_tokens(model_path, int(config.get("max_position_embeddings", 512)))
        super().__init__(model_path, model_name, limit)
        self.dim = int(config["hidden_size"])
        self.quantize = quantize
        self.onnx_path = ensure_onnx_model(model_path, quantize)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _cpu_count()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.onnx_path, options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return self.session.run([OUTPUT_NAME], feed)[0]
