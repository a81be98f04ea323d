"""Smoke tests of scripts/soak (a short soak on a small corpus passes: no errors, bounded memory growth), of
scripts/fuzz, scripts/bench_ab, scripts/bench_stages and scripts/bench_lexical; and that scripts/bench_query.py
measures side_by_side's reference.

Two index builds with the real model plus 5 s of traffic; longer when the machine is busy, since the run always
waits for its mid-run full build to finish.
"""
import ast
import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_soak_passes():
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "soak"), "--duration", "5", "--clients", "4",
           "--warmup", "3", "--corpus", "seeds"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "| **all** |" in p.stdout and "PASS: 0 errors" in p.stdout


def test_fuzz_passes():
    """scripts/fuzz: issue 25's hostile inputs and 30 random mutations on one worker and on two, no 5xx
    (test_lifecycle covers hostile input on both servers in detail; `scripts/fuzz` alone runs 300)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fuzz"), "--random", "30"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0 and "PASS: 0 failures" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]


def _version_rows(stdout: str) -> dict[str, list[str]]:
    """bench_ab's table rows by version (a folder path), each split into its cells."""
    return {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in stdout.splitlines()
            if line.startswith(("| /", f"| {ROOT}"))}


def test_bench_ab_serves_each_version_at_once(fake_seed_index_dir, tmp_path):
    """scripts/bench_ab: a folder and a git ref served side by side, each from its own code (a copy of qa/ that
    answers differently shows it), for searches and for asks, and a version that is neither fails in one line."""
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(ROOT, "qa"), copy / "qa", ignore=shutil.ignore_patterns("__pycache__"))
    service = copy / "qa" / "service.py"
    text = service.read_text()
    assert '"took_ms": round(' in text
    service.write_text(text.replace('"took_ms": round(', '"took_ms": 1000 + round('))  # marks the copy's answers
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_ab.py"), "--index-dir", fake_seed_index_dir,
           "--rounds", "2", "--block", "5", "--questions", os.path.join(ROOT, "eval", "squad-dev", "questions.jsonl")]
    p = subprocess.run([*cmd, ROOT, str(copy)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = _version_rows(p.stdout)
    assert set(rows) == {ROOT, str(copy)}, p.stdout
    assert float(rows[str(copy)][2]) > 1000 > float(rows[ROOT][2])  # took_ms p50: each server ran its own code
    p = subprocess.run([*cmd, "--endpoint", "ask", ROOT, str(copy)], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert p.returncode == 0 and "5 asks each" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    rows = _version_rows(p.stdout)
    assert float(rows[str(copy)][2]) > 1000 > float(rows[ROOT][2])  # the asks' took_ms, each from its own code
    p = subprocess.run([*cmd, "no-such-ref", ROOT], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        f"bench_ab: 'no-such-ref' is neither a folder holding qa/ nor a git ref of {ROOT}"]


def test_bench_stages_times_the_steps_a_search_takes(fake_seed_index_dir):
    """scripts/bench_stages: each step a search on an exact index takes is timed once a search (the approximate
    index's dense candidates, which it skips, not at all), and nested steps under theirs."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_stages.py"), "--index-dir", fake_seed_index_dir,
           "--questions", "6", "--warmup", "2", "--rounds", "2", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert len(out["rounds"]) == 2 and out["passages"] > 0
    for result in out["rounds"]:
        steps = result["steps"]
        once = ["the query's embedding", "the pass over every window (an exact index)", "tantivy's top-k",
                "the exact BM25 with proximity of the candidates", "the sentence signals", "term coverage",
                "the fusion", "the hits' passages", "the duplicate collapse"]
        assert {label: steps[label]["calls"] for label in once} == dict.fromkeys(once, 1.0)
        assert "the dense candidates (an approximate index, or filters)" not in steps
        assert steps["term coverage"]["depth"] == 1 and steps["the sentence signals"]["depth"] == 0
        assert 0 < steps["term coverage"]["p50_ms"] <= result["search_ms"]


def test_bench_lexical_times_both_ways_of_the_same_scores(tmp_path):
    """scripts/bench_lexical: a corpus past squad-dev, each question's candidates scored from their words and by
    tantivy, the two checked alike before they are timed."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_lexical.py"), "--passages", "2500", "--questions",
           "20", "--passes", "1", "--work", str(tmp_path), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["passages"] > 2067 and out["questions"] == 20 and out["worst_difference"] < 1e-5
    assert len(out["passes"]) == 1 and out["passes"][0]["words_p50_ms"] > 0 < out["passes"][0]["tantivy_p50_ms"]


def _assigned(source: str, name: str):
    """The literal value assigned to `name` at the top level of a module's source."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no {name} = ... in the source")


def test_bench_query_divides_by_the_reference_side_by_side_measures():
    """scripts/bench_query.py encodes, for its reference, the short queries that ../shared/bench/side_by_side.py
    encodes for its own, so the two benchmarks' ratios share a denominator."""
    peer = os.path.join(os.path.dirname(ROOT), "shared", "bench", "side_by_side.py")
    if not os.path.exists(peer):
        pytest.skip("../shared is not beside the project")
    with open(peer, encoding="utf-8") as f:
        peer_code = _assigned(f.read(), "REFERENCE")
    peer_queries = [e.value for node in ast.walk(ast.parse(peer_code)) if isinstance(node, ast.List)
                    for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    with open(os.path.join(ROOT, "scripts", "bench_query.py"), encoding="utf-8") as f:
        ours = _assigned(f.read(), "REFERENCE_QUERIES")
    assert peer_queries and list(ours) == peer_queries
