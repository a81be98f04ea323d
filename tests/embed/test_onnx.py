"""The ONNX Runtime backend against the PyTorch reference, with the real packaged all-MiniLM-L6-v2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from qa.chunk import split_sentences  # noqa: E402
from qa.embed import PACKAGED_MODEL, load_embedder, packaged_model_path  # noqa: E402
from qa.embed.onnx import CACHE_ENV, INT8_FILES, OnnxEmbedder, cache_dir  # noqa: E402
from qa.embed.torch import TorchEmbedder  # noqa: E402

from conftest import ROOT as CONFTEST_ROOT  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(CONFTEST_ROOT)
ARTICLES = ROOT / "eval" / "squad-dev" / "articles.jsonl"
MIN_COSINE = 0.99  # every text on its own (the query path), and passages against their sentences
# in a batch, int8 activations share one scale per tensor with longer texts and their padding, so one word among
# them lands further from PyTorch (docs/performance.md#the-onnx-recipe); the mean still tells a worse recipe apart
MIN_BATCHED_COSINE = 0.985
MIN_MEAN_COSINE = 0.995

QUERIES = [
    "who won super bowl 50?",
    "Which NFL team represented the AFC at Super Bowl 50?",
    "when did the apollo program end",
    "What is the capital of Warsaw's Mazovian Voivodeship?",
    "causes of the French and Indian war",
    "how do oxygen atoms bond",
    "Who designed the Victoria and Albert Museum building?",
    "largest city in southern California",
    "What did Tesla think could be used to transmit power?",
    "Why do pharmacists need a licence?",
    "the Amazon rainforest covers how many square kilometres",
    "Kenya economy tourism",
    "climate",
    "a",
    "Zürich – 東京 ☃ café naïve résumé",
    "1997 2024 3.14159 $5,000,000",
    "US says fentanyl talks with China 'meaningful' but more needs to be done",
]


def _paragraphs() -> list[str]:
    """Every SQuAD dev paragraph, in file order."""
    with open(ARTICLES, encoding="utf-8") as f:
        return [p for line in f if line.strip() for p in json.loads(line)["paragraphs"]]


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """About 50 varied texts: queries, odd strings, SQuAD paragraphs and one text longer than the window."""
    paragraphs = _paragraphs()
    sample = paragraphs[:: len(paragraphs) // 30][:30]
    long_text = " ".join(paragraphs[:6])
    return [*QUERIES, *sample, long_text]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """QA_CACHE_DIR pointed at a fresh folder for the whole session, so the export below runs once, there."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def onnx_embedder(onnx_cache: Path) -> OnnxEmbedder:
    """The int8 ONNX embedder, exported into the session's cache folder."""
    return OnnxEmbedder(packaged_model_path(), PACKAGED_MODEL)


@pytest.fixture(scope="session")
def torch_embedder(embedder) -> TorchEmbedder:
    """The PyTorch reference: the session's real model, loaded once for every test that needs it."""
    assert isinstance(embedder, TorchEmbedder) and embedder.model_name == PACKAGED_MODEL
    return embedder


@pytest.fixture(scope="session")
def expected(torch_embedder: TorchEmbedder, texts: list[str]) -> np.ndarray:
    """The reference vectors of `texts`, encoded once for the tests that compare against them."""
    return torch_embedder.encode(texts, batch_size=8)


@pytest.fixture(scope="session")
def fp32_embedder(onnx_embedder: OnnxEmbedder) -> OnnxEmbedder:
    """The float32 variant, from the session's export (exported before the int8 file is quantised from it)."""
    return OnnxEmbedder(packaged_model_path(), PACKAGED_MODEL, quantize=False)


def test_export_lands_in_the_cache_dir(onnx_embedder: OnnxEmbedder, onnx_cache: Path) -> None:
    folder = Path(cache_dir(packaged_model_path()))
    assert folder.parent == onnx_cache
    assert Path(onnx_embedder.onnx_path) == folder / INT8_FILES[True]
    assert onnx_embedder.backend == "onnx"
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp.onnx")]  # no temporary left over


def test_shape_and_settings_match_torch(onnx_embedder: OnnxEmbedder, torch_embedder: TorchEmbedder) -> None:
    assert onnx_embedder.dim == torch_embedder.dim == 384
    assert onnx_embedder.max_tokens == torch_embedder.max_tokens == 256
    vecs = onnx_embedder.encode(["one", "two words"])
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert onnx_embedder.encode([]).shape == (0, 384)


def test_encode_matches_torch(onnx_embedder: OnnxEmbedder, expected: np.ndarray, texts: list[str]) -> None:
    assert len(texts) >= 45
    assert max(onnx_embedder.count_tokens(texts)) > 256  # one text is split into pieces
    # int8 activations are quantised per batch, so check batched encodes and one-text encodes (the query path)
    for batch_size in (8, 32, 1):
        got = onnx_embedder.encode(texts, batch_size=batch_size)
        cosines = (got * expected).sum(axis=1)
        worst = int(np.argmin(cosines))
        least = MIN_COSINE if batch_size == 1 else MIN_BATCHED_COSINE
        assert cosines.min() >= least, f"batch {batch_size}: {cosines[worst]:.4f} for {texts[worst][:80]!r}"
        assert cosines.mean() >= MIN_MEAN_COSINE, f"batch {batch_size}: mean {cosines.mean():.5f}"


def test_blank_text_gives_a_unit_vector(onnx_embedder: OnnxEmbedder, torch_embedder: TorchEmbedder) -> None:
    # only [CLS] [SEP]: the service rejects blank queries, so a looser bound than for real text
    got, expected = onnx_embedder.encode(["", " "]), torch_embedder.encode(["", " "])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * expected).sum(axis=1).min() >= 0.97


def test_encode_spans_matches_torch(onnx_embedder: OnnxEmbedder, torch_embedder: TorchEmbedder,
                                    texts: list[str]) -> None:
    docs = [t for t in texts if len(t) > 200]
    spans = [split_sentences(t) for t in docs]
    assert sum(len(s) for s in spans) > 3 * len(docs)
    got_texts, got_spans, _ = onnx_embedder.encode_spans(docs, spans, batch_size=8)
    exp_texts, exp_spans, _ = torch_embedder.encode_spans(docs, spans, batch_size=8)
    assert (got_texts * exp_texts).sum(axis=1).min() >= MIN_COSINE
    for doc, g, e in zip(docs, got_spans, exp_spans):
        assert g.shape == e.shape
        assert (g * e).sum(axis=1).min() >= MIN_COSINE, doc[:80]
    np.testing.assert_allclose(got_texts, onnx_embedder.encode(docs, batch_size=8), atol=1e-6)


def test_second_construction_reuses_the_cached_file(onnx_embedder: OnnxEmbedder, onnx_cache: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(onnx_cache))
    before = {p.name: p.stat().st_mtime_ns for p in Path(onnx_embedder.onnx_path).parent.iterdir()}
    again = OnnxEmbedder(packaged_model_path(), PACKAGED_MODEL)
    assert again.onnx_path == onnx_embedder.onnx_path
    after = {p.name: p.stat().st_mtime_ns for p in Path(again.onnx_path).parent.iterdir()}
    assert after == before  # nothing exported or written again
    np.testing.assert_array_equal(again.encode(QUERIES[:3]), onnx_embedder.encode(QUERIES[:3]))


def test_load_embedder_picks_the_onnx_backend(onnx_embedder: OnnxEmbedder) -> None:
    embedder = load_embedder(None, backend="onnx")
    assert isinstance(embedder, OnnxEmbedder) and embedder.model_name == PACKAGED_MODEL
    assert embedder.onnx_path == onnx_embedder.onnx_path


def test_cached_load_in_a_fresh_process_needs_no_torch(onnx_embedder: OnnxEmbedder, onnx_cache: Path) -> None:
    code = (
        "import sys, time\n"
        "started = time.perf_counter()\n"
        "from qa.embed import PACKAGED_MODEL, packaged_model_path\n"
        "from qa.embed.onnx import OnnxEmbedder\n"
        "e = OnnxEmbedder(packaged_model_path(), PACKAGED_MODEL)\n"
        "e.encode(['who won super bowl 50?'])\n"
        "print(time.perf_counter() - started, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {**os.environ, CACHE_ENV: str(onnx_cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    seconds, torch_loaded, transformers_loaded = float(out[0]), out[1] == "True", out[2] == "True"
    assert not torch_loaded and not transformers_loaded
    assert seconds < 5.0  # the service must answer within 5 s of starting


def test_fp32_variant_matches_torch_closely(onnx_embedder: OnnxEmbedder, fp32_embedder: OnnxEmbedder,
                                            expected: np.ndarray, texts: list[str]) -> None:
    fp32 = fp32_embedder
    assert fp32.onnx_path != onnx_embedder.onnx_path
    assert Path(fp32.onnx_path).stat().st_size > 2 * Path(onnx_embedder.onnx_path).stat().st_size
    cosines = (fp32.encode(texts[:25], batch_size=8) * expected[:25]).sum(axis=1)
    assert cosines.min() >= 0.9999


def test_the_graph_runs_on_fused_transformer_operators(onnx_embedder: OnnxEmbedder,
                                                       fp32_embedder: OnnxEmbedder) -> None:
    import onnx

    fp32 = fp32_embedder
    kinds = {}
    for path in (fp32.onnx_path, onnx_embedder.onnx_path):
        ops = [node.op_type for node in onnx.load(path).graph.node]
        kinds[path] = ops
    # ~320 nodes unfused; the int8 file adds the quantiser's own nodes, which a session fuses back
    assert len(kinds[fp32.onnx_path]) < 100 and len(kinds[onnx_embedder.onnx_path]) < 150
    fused = kinds[fp32.onnx_path]
    assert fused.count("Attention") == 6 and fused.count("LayerNormalization") == 12  # MiniLM-L6: 6 layers
    assert "SkipLayerNormalization" not in fused  # the slower kernel (docs/performance.md#the-onnx-recipe)
    quantised = kinds[onnx_embedder.onnx_path]
    assert quantised.count("QAttention") == 6 and "Attention" not in quantised
    # the outlier-sensitive MatMuls in 8-bit blocks: the first layer's attention output and feed-forward
    # up-projection, and each later layer's attention output; the feed-forward down-projections int8 per tensor
    # (with the five up-projections of the later layers: 11), their few outlier channels in float MatMuls beside
    assert quantised.count("MatMulNBits") == 2 + 5 and quantised.count("MatMulInteger") == 5 + 6
    graph = onnx.load(onnx_embedder.onnx_path).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    floats = [node for node in graph.node if node.op_type == "MatMul"]
    assert 1 <= len(floats) <= 6 and all(node.name.endswith("/output/dense/MatMul_outliers") for node in floats)
    assert all(shapes[node.input[1]][0] <= 4 for node in floats)


def test_outlier_channels_come_from_the_calibration_text_and_leave_the_float_graph_as_it_was(
        fp32_embedder: OnnxEmbedder, tmp_path: Path) -> None:
    import onnxruntime as ort

    from qa.embed.onnx import _outlier_channels, _outlier_nodes, _split_channels

    source = fp32_embedder.onnx_path
    sensitive = _outlier_nodes(source, 1536)
    assert len(sensitive.split) == 6 and len(sensitive.blocks) == 7
    channels = _outlier_channels(source, packaged_model_path(), sensitive.split)
    # the model's few outlier channels (docs/performance.md#the-onnx-recipe), not a spread of ordinary ones
    assert 1 <= sum(map(len, channels.values())) <= 8 and all(len(c) <= 4 for c in channels.values())
    target = tmp_path / "split.onnx"
    assert len(_split_channels(source, str(target), channels)) == sum(1 for c in channels.values() if c)

    ids = [[fp32_embedder.cls_id, *fp32_embedder.tokenizer.encode(q, add_special_tokens=False).ids,
            fp32_embedder.sep_id] for q in QUERIES[:4]]
    width = max(map(len, ids))
    batch = np.array([row + [fp32_embedder.pad_id] * (width - len(row)) for row in ids], np.int64)
    mask = (np.arange(width)[None, :] < np.array([len(row) for row in ids])[:, None]).astype(np.int64)
    feed = {"input_ids": batch, "attention_mask": mask, "token_type_ids": np.zeros_like(batch)}
    outputs = []
    for path in (source, target):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0])
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4


def test_a_request_alone_runs_on_the_idle_session_with_the_same_vectors(onnx_embedder: OnnxEmbedder,
                                                                       texts: list[str]) -> None:
    from qa.process import REQUESTS

    narrow = OnnxEmbedder(packaged_model_path(), PACKAGED_MODEL, threads=1)
    wide = OnnxEmbedder(packaged_model_path(), PACKAGED_MODEL, threads=1, idle_threads=2)
    assert narrow.idle_session is None and wide.idle_session is not None
    assert OnnxEmbedder(packaged_model_path(), PACKAGED_MODEL, threads=2, idle_threads=2).idle_session is None
    seen = []

    def request(environ: dict, start_response) -> list[bytes]:
        seen.append(wide.running_session())
        return [b""]

    def request_beside_another(environ: dict, start_response) -> list[bytes]:
        return REQUESTS.wrap(request)(environ, start_response)

    assert wide.running_session() is wide.idle_session  # no server: nothing else runs
    REQUESTS.wrap(request)({}, None)
    REQUESTS.wrap(request_beside_another)({}, None)
    assert seen == [wide.idle_session, wide.session]
    assert REQUESTS.count == 0
    # the thread count changes how the work is split, not the arithmetic: rankings cannot depend on the load
    assert np.array_equal(wide.encode(texts, batch_size=8), narrow.encode(texts, batch_size=8))
    for q in QUERIES:
        assert np.array_equal(wide.encode_query(q).vector, narrow.encode_query(q).vector)


def test_a_query_encodes_as_encode_and_token_vectors_do(onnx_embedder: OnnxEmbedder, texts: list[str]) -> None:
    # a query of one piece skips the batching machinery; a longer one is pooled over its pieces as `encode` does
    long = " ".join(texts)
    assert onnx_embedder.count_tokens([long])[0] > onnx_embedder.max_tokens
    for q in [*QUERIES, "", long]:
        encoded = onnx_embedder.encode_query(q)
        (tokens,) = onnx_embedder.token_vectors([q])
        assert np.array_equal(encoded.vector, onnx_embedder.encode([q])[0])
        assert np.array_equal(encoded.tokens.vectors, tokens.vectors)
        assert np.array_equal(encoded.tokens.offsets, tokens.offsets) and len(tokens.offsets) == len(tokens.vectors)


def test_sessions_keep_the_layer_norms_unfused(onnx_embedder: OnnxEmbedder, tmp_path: Path) -> None:
    # ONNX Runtime's own optimiser fuses the residual additions and LayerNormalization into SkipLayerNormalization
    # when the session is made, unless told not to: the graph it runs is what counts
    import onnx
    import onnxruntime as ort

    from qa.embed.onnx import DISABLED_OPTIMIZERS

    def runs(disabled: list[str]) -> list[str]:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
        ort.InferenceSession(onnx_embedder.onnx_path, options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=disabled)
        return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]

    assert runs([]).count("SkipLayerNormalization") == 12
    kept = runs(list(DISABLED_OPTIMIZERS))
    assert "SkipLayerNormalization" not in kept and kept.count("LayerNormalization") == 12


def test_stale_files_go_but_current_ones_stay(tmp_path: Path) -> None:
    from qa.embed.onnx import FP32_FILE, RETIRED_FILES, TEMP_SUFFIX, _remove_stale_files

    names = [*RETIRED_FILES, f".{FP32_FILE}.123{TEMP_SUFFIX}", FP32_FILE, *INT8_FILES.values(), "export.lock"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    _remove_stale_files(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([FP32_FILE, *INT8_FILES.values(), "export.lock"])
