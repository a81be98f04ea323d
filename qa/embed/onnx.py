"""The model's transformer run by ONNX Runtime, int8 quantised: faster than PyTorch on the CPU, close to its vectors.

The ONNX file is exported from PyTorch, fused and quantised once per model and cached, so later loads need neither
PyTorch nor transformers. The recipe and why each step is there: see docs/performance.md.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..config import env_number
from ..files import atomic_path
from ..process import REQUESTS, cpu_count
from .base import TransformerEmbedder, load_tokenizer, model_fingerprint, model_max_tokens

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

log = logging.getLogger(__name__)

CACHE_ENV = "QA_CACHE_DIR"
THREADS_ENV = "QA_EMBED_THREADS"
IDLE_THREADS_ENV = "QA_EMBED_IDLE_THREADS"
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
FP32_FILE = "model.fp32-fused-v3.onnx"
INT8_FILES = {True: "model.int8-split-v5.onnx", False: "model.int8-v3.onnx"}  # by outlier_blocks; renamed per recipe
RETIRED_FILES = ("model.fp32.onnx", "model.int8-mixed-v1.onnx", "model.int8-v1.onnx",  # earlier recipes' files
                 "model.int8-mixed-v2.onnx", "model.fp32-fused-v2.onnx", "model.int8-blocks-v3.onnx",
                 "model.int8-v2.onnx", "model.int8-blocks-v4.onnx")
LOCK_FILE = "export.lock"
LOCK_TIMEOUT = 1800.0
EXPORT_TOLERANCE = 1e-3  # max abs difference to PyTorch accepted for the fp32 export
FIRST_LAYER = re.compile(r"/layers?\.0/")
ATTENTION_OUTPUT = re.compile(r"/attention/output/")
TEMP_SUFFIX = ".tmp.onnx"
BLOCK = 128  # weights and activations per scale in the outlier-sensitive layers (see docs/performance.md)
# a down-projection's input channel is an outlier above this many times its median channel: the model's outlier
# channels stand well above it and the next well below (docs/performance.md#the-onnx-recipe)
OUTLIER_RATIO = 6.0
CALIBRATION_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration.txt")
# a session's own graph optimisers left out: this one would fuse back what `_fuse` leaves unfused
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def cache_dir(model_path: str) -> str:
    """Folder of a model's ONNX files: `$QA_CACHE_DIR/<fingerprint>` if set, else `~/.cache/qa/onnx/<fingerprint>`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "qa", "onnx")
    return os.path.join(root, model_fingerprint(model_path))


def _read_config(model_path: str) -> dict:
    """The model folder's config.json."""
    with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def _export(model_path: str, target: str) -> None:
    """Export the model's transformer (`last_hidden_state`) to a float32 ONNX file, checked against PyTorch."""
    import inspect

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_path, local_files_only=True, attn_implementation="eager").eval()
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
    with atomic_path(target, suffix=TEMP_SUFFIX) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the legacy exporter
        # the legacy exporter writes one file, which the rename publishes whole (see docs/performance.md)
        torch.onnx.export(Transformer().eval(), example, tmp, input_names=list(names), output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
        _check_export(tmp, model, names)
        if _fuse(tmp, model.config):
            _check_export(tmp, model, names)


def _fuse(onnx_path: str, config: PretrainedConfig) -> bool:
    """Fuse a BERT-like graph into ONNX Runtime's transformer operators, in place; False (and the file left as it
    was) when its attention does not fuse."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    if not heads or not hidden:
        return False
    options = FusionOptions("bert")
    # ONNX Runtime's CPU kernel of SkipLayerNormalization is several times slower than the additions and the
    # LayerNormalization it would replace, at a query's shape and a build's (docs/performance.md#the-onnx-recipe)
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimizer.optimize_model(onnx_path, model_type="bert", num_heads=heads, hidden_size=hidden,
                                         optimization_options=options,
                                         opt_level=0)  # the optimizer's own fusions only: a portable graph
    if fused.get_fused_operator_statistics().get("Attention", 0) != getattr(config, "num_hidden_layers", -1):
        log.warning("%s: attention did not fuse; keeping the graph as exported", config.name_or_path)
        return False
    fused.save_model_to_file(onnx_path)
    return True


def _check_export(onnx_path: str, model: PreTrainedModel, names: tuple[str, ...]) -> None:
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


class SensitiveNodes(NamedTuple):
    """The MatMuls whose inputs carry outliers that one int8 scale per tensor loses (see docs/performance.md)."""

    blocks: list[str]  # quantised in 8-bit blocks: the first layer's and the attention output projections
    split: list[str]  # the feed-forward down-projections: their outlier channels apart in float32, the rest int8


def _outlier_nodes(onnx_path: str, intermediate_size: int | None) -> SensitiveNodes:
    """The outlier-sensitive MatMuls: the first layer's, the feed-forward down-projections and the attention output
    projections."""
    import onnx

    model = onnx.load(onnx_path)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    found = SensitiveNodes([], [])
    for node in model.graph.node:
        weights = [shapes[i] for i in node.input if i in shapes]
        if node.op_type != "MatMul" or not weights:
            continue
        if bool(intermediate_size) and weights[0][:1] == (intermediate_size,):
            found.split.append(node.name)
        elif FIRST_LAYER.search(node.name) or ATTENTION_OUTPUT.search(node.name):
            found.blocks.append(node.name)
    return found


def _calibration_texts() -> list[str]:
    """The calibration text's lines: news sentences, questions and page chrome written for it, no evaluation data."""
    with open(CALIBRATION_FILE, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _outlier_channels(onnx_path: str, model_path: str, nodes: list[str]) -> dict[str, list[int]]:
    """Per MatMul of `nodes`, the input channels whose largest magnitude over the calibration text is above
    OUTLIER_RATIO times the median channel's, from the float32 graph."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(onnx_path)
    inputs = {node.name: node.input[0] for node in model.graph.node if node.name in nodes}
    names = list(dict.fromkeys(inputs.values()))
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(model_path)  # every token real, as the embedder feeds them one text at a time
    tokenizer.enable_truncation(128)  # the file's lines are sentences: a guard, not a cut
    feeds = {i.name for i in session.get_inputs()}
    largest = {name: 0.0 for name in names}
    for text in _calibration_texts():
        ids = np.array([tokenizer.encode(text).ids], np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        for name, value in zip(names, session.run(names, {k: v for k, v in feed.items() if k in feeds})):
            largest[name] = np.maximum(largest[name], np.abs(value.reshape(-1, value.shape[-1])).max(axis=0))
    return {node: np.flatnonzero(largest[x] > OUTLIER_RATIO * np.median(largest[x])).tolist()
            for node, x in inputs.items()}


def _split_channels(source: str, target: str, channels: dict[str, list[int]]) -> list[str]:
    """Write `source` to `target` with each MatMul of `channels` in two: its outlier input channels through a small
    float MatMul (a `Gather` of them), the others, the outliers zeroed, through the MatMul itself, which int8 per
    tensor then quantises; the two added. Returns the float MatMuls' names."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(source)
    weights = {init.name: init for init in model.graph.initializer}
    nodes, floats = [], []
    for node in model.graph.node:
        picked = channels.get(node.name)
        if not picked:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weights[node.input[1]])
        x, y, name = node.input[0], node.output[0], node.name
        mask = np.ones(w.shape[0], np.float32)
        mask[picked] = 0.0
        model.graph.initializer.extend([numpy_helper.from_array(np.array(picked, np.int64), f"{name}_outlier_ids"),
                                        numpy_helper.from_array(w[picked].copy(), f"{name}_outlier_weights"),
                                        numpy_helper.from_array(mask, f"{name}_outlier_mask")])
        floats.append(f"{name}_outliers")
        nodes += [helper.make_node("Gather", [x, f"{name}_outlier_ids"], [f"{name}_outlier_x"], axis=-1,
                                   name=f"{name}_gather"),
                  helper.make_node("MatMul", [f"{name}_outlier_x", f"{name}_outlier_weights"],
                                   [f"{name}_outlier_y"], name=floats[-1]),
                  helper.make_node("Mul", [x, f"{name}_outlier_mask"], [f"{name}_rest_x"], name=f"{name}_mask"),
                  helper.make_node("MatMul", [f"{name}_rest_x", node.input[1]], [f"{name}_rest_y"], name=name),
                  helper.make_node("Add", [f"{name}_rest_y", f"{name}_outlier_y"], [y], name=f"{name}_add")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, target)
    return floats


def _quantize(source: str, target: str, sensitive: SensitiveNodes, model_path: str) -> None:
    """int8 quantisation of a float32 ONNX file (`_quantize_per_tensor`), except the outlier-sensitive MatMuls: the
    `blocks` ones quantised in blocks instead (`_block_quantize`), the `split` ones with their outlier channels in
    float32 (`_split_channels`)."""
    with atomic_path(target, suffix=TEMP_SUFFIX) as tmp, _quiet_root_logger():
        floats = []
        if sensitive.split:
            floats = _split_channels(source, tmp, _outlier_channels(source, model_path, sensitive.split))
            source = tmp
        _quantize_per_tensor(source, tmp, sensitive.blocks + floats)
        if sensitive.blocks:
            _block_quantize(tmp, sensitive.blocks, keep=floats)


def _quantize_per_tensor(source: str, target: str, exclude: Sequence[str] = ()) -> None:
    """int8 MatMuls, weights per output channel and activations with one scale per tensor computed at run time,
    except the `exclude` ones, left float."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # shape inference does not type the fused operators' outputs: they are float
    quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})


def _block_quantize(onnx_path: str, nodes: list[str], keep: Sequence[str] = ()) -> None:
    """Turn `nodes` (float MatMuls) into 8-bit MatMulNBits, in place: a scale per BLOCK weights, and at accuracy
    level 4 int8 activations with a scale per BLOCK too, which keeps the outliers and runs at int8 speed. The
    float MatMuls of `keep` stay float (the quantiser takes every MatMul it is not told to leave)."""
    import onnx

    # the quantiser's module calls logging.basicConfig(level=INFO) on import: with a handler on the root logger
    # that call does nothing, and the process's logging stays as it was
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                     MatMulNBitsQuantizer)
    finally:
        root.removeHandler(guard)
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)  # one INFO line per node
    settings = {"bits": 8, "block_size": BLOCK, "is_symmetric": False, "accuracy_level": 4}
    quantizer = MatMulNBitsQuantizer(onnx.load(onnx_path), nodes_to_include=nodes, nodes_to_exclude=list(keep),
                                     algo_config=DefaultWeightOnlyQuantConfig(**settings), **settings)
    quantizer.process()
    quantizer.model.save_model_to_file(onnx_path, use_external_data_format=False)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Drop the quantiser's advice below ERROR, which it logs on the root logger ("consider pre-processing")."""
    def only_errors(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(only_errors)
    try:
        yield
    finally:
        root.removeFilter(only_errors)


def _remove_stale_files(folder: str) -> None:
    """Delete temporaries of exports that were killed, and earlier recipes' files; call only while holding the
    folder's lock (a process still running an earlier recipe has its file loaded already)."""
    for name in os.listdir(folder):
        if name.endswith(TEMP_SUFFIX):
            log.warning("removing %s, left by an interrupted export", name)
        elif name not in RETIRED_FILES:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


def ensure_onnx_model(model_path: str, quantize: bool = True, outlier_blocks: bool = True) -> str:
    """Path of the model's cached ONNX file, exported (and quantised) first if missing; safe across processes."""
    folder = cache_dir(model_path)
    target = os.path.join(folder, INT8_FILES[outlier_blocks] if quantize else FP32_FILE)
    if os.path.exists(target):  # files appear only by rename, so an existing one is complete
        return target
    from filelock import FileLock, Timeout

    os.makedirs(folder, exist_ok=True)
    try:
        with FileLock(os.path.join(folder, LOCK_FILE), timeout=LOCK_TIMEOUT):
            if os.path.exists(target):  # another process made it while we waited
                return target
            _remove_stale_files(folder)
            fp32 = os.path.join(folder, FP32_FILE)
            if not os.path.exists(fp32):
                started = time.perf_counter()
                log.info("exporting %s to ONNX in %s", model_path, folder)
                _export(model_path, fp32)
                log.info("exported %s in %.1fs", FP32_FILE, time.perf_counter() - started)
            if quantize:
                started = time.perf_counter()
                sensitive = (_outlier_nodes(fp32, _read_config(model_path).get("intermediate_size"))
                             if outlier_blocks else SensitiveNodes([], []))
                _quantize(fp32, target, sensitive, model_path)
                log.info("quantised %s in %.1fs (%d nodes in blocks, %d split)", os.path.basename(target),
                         time.perf_counter() - started, len(sensitive.blocks), len(sensitive.split))
    except Timeout:
        raise RuntimeError(f"another process holds {folder}/{LOCK_FILE} (waited {LOCK_TIMEOUT:.0f}s)") from None
    return target


class OnnxEmbedder(TransformerEmbedder):
    """The model's transformer run by ONNX Runtime on the CPU, int8 quantised unless `quantize=False`.

    `outlier_blocks=False` quantises every layer per tensor, the outlier-sensitive ones too: further from PyTorch
    (see docs/performance.md).
    `threads` defaults to $QA_EMBED_THREADS, else the cores this process may use. `idle_threads` (default
    $QA_EMBED_IDLE_THREADS), when more than `threads`, is what a forward pass may use while its request is the only
    one its process serves (`qa.process.REQUESTS`): a second session, whose threads spin only while it runs.
    """

    backend = "onnx"

    def __init__(self, model_path: str, model_name: str, max_tokens: int | None = None, *, quantize: bool = True,
                 outlier_blocks: bool = True, threads: int | None = None, idle_threads: int | None = None):
        config = _read_config(model_path)
        limit = max_tokens or model_max_tokens(model_path, int(config.get("max_position_embeddings", 512)))
        super().__init__(model_path, model_name, limit)
        self.dim = int(config["hidden_size"])
        self.onnx_path = ensure_onnx_model(model_path, quantize, outlier_blocks)
        threads = threads or env_number(THREADS_ENV, whole=True) or cpu_count()
        idle_threads = idle_threads or env_number(IDLE_THREADS_ENV, 0, whole=True)
        self.session = self._session(threads)
        self.idle_session = self._session(idle_threads, stop_spinning=True) if idle_threads > threads else None
        self._inputs = {i.name for i in self.session.get_inputs()}

    def _session(self, threads: int, stop_spinning: bool = False):
        """An ONNX Runtime session of the model on `threads` threads."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no memory arena: it grows to the largest batch run (a build's, an admin write's) and keeps it for the
        # server's life; freed tensors go back to malloc, tuned and trimmed by qa.process (docs/operations.md)
        options.enable_cpu_mem_arena = False
        if stop_spinning:
            # the pool's threads otherwise spin on for milliseconds after a run, on the core the next request needs
            options.add_session_config_entry("session.force_spinning_stop", "1")
        return ort.InferenceSession(self.onnx_path, options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token embeddings [batch, seq, dim] from the ONNX session."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return self.running_session().run([OUTPUT_NAME], feed)[0]

    def running_session(self):
        """The session for a forward pass now: the idle one while the caller's request is its process's only one."""
        return self.idle_session if self.idle_session is not None and REQUESTS.alone() else self.session
