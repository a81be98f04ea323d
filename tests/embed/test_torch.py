"""The PyTorch embedder with the real, packaged all-MiniLM-L6-v2."""
import pytest


@pytest.mark.slow
def test_embedding_in_chunks_changes_nothing(embedder, monkeypatch):
    """Big builds embed SORT_CHUNK texts at a time (memory); vectors and span vectors are the same as in one go."""
    import numpy as np

    import qa.embed.base

    texts = ["Short one.", "A longer text about the harbour strike. Talks resume on Friday.", "x " * 400,
             "Rail fares rise. Commuters object.", "", "Dock workers walked out over pay."]
    spans = [[(0, 10)], [(0, 39), (40, 63)], [(0, 100), (100, 800)], [(0, 16), (17, 34)], [], [(0, 4)]]
    whole_vecs, whole_spans, _ = embedder.encode_spans(texts, spans)
    whole = embedder.encode(texts)
    monkeypatch.setattr(qa.embed.base, "SORT_CHUNK", 2)
    vecs, span_vecs, _ = embedder.encode_spans(texts, spans)
    assert np.allclose(vecs, whole_vecs, atol=1e-5) and np.allclose(embedder.encode(texts), whole, atol=1e-5)
    assert [s.shape for s in span_vecs] == [s.shape for s in whole_spans]
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(span_vecs, whole_spans))
