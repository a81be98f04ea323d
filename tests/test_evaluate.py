"""Retrieval quality with the real model on a small vendored SQuAD subset, titles in dense vectors; `qa eval`'s
command line."""
import json
import os

import pytest
from click.testing import CliRunner

from qa.cli import main
from qa.config import Config
from qa.embed import HashEmbedder
from qa.evaluate import evaluate, read_questions
from qa.index import build_index, load_index
from qa.search import search
from qa.service import Engine

from conftest import SQUAD_SMALL


pytestmark = pytest.mark.slow
QUESTIONS = os.path.join(SQUAD_SMALL, "questions.jsonl")
METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "answer_hit@1", "latency_p50_ms", "latency_p95_ms")


def _eval(index_dir, mode, *options):
    res = CliRunner().invoke(main, ["eval", QUESTIONS, "--index-dir", index_dir, "--mode", mode, "--json", *options])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_eval_reports_every_metric_and_hybrid_leads(squad_small_index_dir, embedder):
    # what `qa eval` runs, on the session's model (the command would load it again for each mode); answers are
    # checked on hybrid only: the other modes' retrieval metrics without answer extraction
    index = Engine(Config(index_dir=squad_small_index_dir), embedder=embedder).index()
    qs = read_questions(QUESTIONS)
    out = {"hybrid": evaluate(index, qs, k=10, mode="hybrid"),
           **{mode: evaluate(index, qs, k=10, mode=mode, answers=False) for mode in ("dense", "lexical")}}
    h = out["hybrid"]
    assert h["questions"] == 120
    for key in METRICS:
        assert key in h
    assert h["recall@5"] >= 0.9 and h["mrr@10"] >= 0.8 and h["answer_hit@1"] >= 0.6
    for key in ("recall@1", "recall@5", "mrr@10"):
        assert h[key] >= max(out["dense"][key], out["lexical"][key]) - 0.02, key


def test_qa_eval_prints_every_metric_as_json(tmp_path):
    """The command on the small subset built with the hash embedder: the model is not the subject here."""
    index_dir = str(tmp_path / "index")
    build_index([os.path.join(SQUAD_SMALL, "articles.jsonl")], index_dir, embedder=HashEmbedder())
    out = _eval(index_dir, "hybrid", "--limit", "20")
    assert out["questions"] == 20 and out["mode"] == "hybrid" and out["k"] == 10
    assert all(key in out for key in METRICS) and 0 <= out["answer_hit@1"] <= 1
    out = _eval(index_dir, "lexical", "--no-answers", "-k", "5")
    assert out["questions"] == 120 and out["mode"] == "lexical" and out["k"] == 5
    assert out["recall@5"] >= 0.5  # the words of SQuAD questions are in their paragraphs


def test_qa_eval_runs_on_one_thread_a_library_as_a_server_does_and_restores_them(tmp_path, monkeypatch):
    # its latencies are a server's only with the libraries' pools held to one thread (docs/performance.md#threads);
    # held for the questions only, so whatever runs after it in the process keeps its pools
    import threadpoolctl

    import qa.evaluate

    index_dir = str(tmp_path / "index")
    build_index([os.path.join(SQUAD_SMALL, "articles.jsonl")], index_dir, embedder=HashEmbedder())
    seen: list[int] = []
    real = qa.evaluate.evaluate

    def recording(*args, **kwargs):
        seen.extend(pool["num_threads"] for pool in threadpoolctl.threadpool_info())
        return real(*args, **kwargs)

    monkeypatch.setattr(qa.evaluate, "evaluate", recording)
    before = [pool["num_threads"] for pool in threadpoolctl.threadpool_info()]
    _eval(index_dir, "hybrid", "--limit", "5")
    assert seen and set(seen) == {1}  # numpy's BLAS at least
    assert [pool["num_threads"] for pool in threadpoolctl.threadpool_info()][:len(before)] == before


def test_eval_rejects_a_bad_question_file(tmp_path, squad_small_index_dir):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "x"}\n')
    res = CliRunner().invoke(main, ["eval", str(bad), "--index-dir", squad_small_index_dir])
    assert res.exit_code != 0 and "doc_id" in res.output and "Traceback" not in res.output


MOUNTAINS = [("kili", "Mount Kilimanjaro", "5,895 metres it is the highest peak on its continent"),
             ("blanc", "Mont Blanc", "4,806 metres it is the highest peak in the Alps"),
             ("denali", "Denali", "6,190 metres it is the highest peak in North America")]


def test_a_paragraph_is_found_by_the_topic_only_its_title_names(tmp_path, embedder):
    # none of the paragraphs names its mountain: without titles in the window vectors the right one leads by
    # 0.02-0.07 cosine; with them by more than 0.15
    path = tmp_path / "mountains.jsonl"
    path.write_text("".join(json.dumps({"id": i, "title": t, "paragraphs": [f"At {p}, and its glaciers are shrinking "
                                                                             "fast."]}) + "\n"
                            for i, t, p in MOUNTAINS))
    build_index([str(path)], str(tmp_path / "index"), embedder=embedder)
    index = load_index(str(tmp_path / "index"), embedder=embedder)
    for doc_id, question in [("kili", "How fast are the glaciers on Kilimanjaro shrinking?"),
                             ("blanc", "How high is Mont Blanc?"), ("denali", "Is Denali's ice melting?")]:
        first, second = search(index, question, 3, mode="dense").hits[:2]
        assert first.passage.doc_id == doc_id and first.scores["dense"] - second.scores["dense"] > 0.1, question
