"""A real `qa serve` (waitress) on a loopback port, driven over HTTP."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ENV, http as get


@pytest.mark.slow
def test_health_and_search_over_http(seed_server):
    status, headers, body = get(seed_server + "/healthz")
    assert status == 200 and json.loads(body)["passages"] == 15
    status, headers, body = get(seed_server + "/api/search?q=what+actions+has+China+taken%3F&k=3")
    res = json.loads(body)["results"]
    assert status == 200 and any("enforcement actions" in r["text"] or "Narcotics Control Board" in r["text"]
                                 for r in res)
    assert headers["Server"] == "qa" or "waitress" in headers.get("Server", "")


def test_errors_over_http_are_json(fake_server):
    for path in ("/api/search", "/api/search?q=china&k=abc", "/api/nope"):
        status, headers, body = get(fake_server + path)
        assert 400 <= status < 500 and "json" in headers["Content-Type"] and json.loads(body)["error"]


def test_page_is_escaped_and_secured(fake_server):
    status, headers, body = get(fake_server + "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    html = body.decode()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "Content-Security-Policy" in headers and headers["X-Content-Type-Options"] == "nosniff"


def test_binds_loopback_by_default(fake_server):
    assert fake_server.startswith("http://127.0.0.1:")


def test_gunicorn_workers_serve_and_reload(live_server, fake_seed_copy):
    """`--workers 2`: gunicorn processes, each with its own model and index; a write reaches every worker."""
    with live_server(fake_seed_copy, {"QA_ADMIN_TOKEN": "s3cret", "QA_RELOAD_INTERVAL": "0.5"}, "--workers", "2",
                     "--threads", "2") as base:
        status, _, body = get(base + "/api/search?q=what+actions+has+China+taken%3F&k=3")
        assert status == 200 and json.loads(body)["results"]
        status, headers, body = get(base + "/api/search", data=b"x" * (2 * 1024 * 1024), method="POST",
                                    headers={"Content-Type": "application/json"})
        assert status == 413 and json.loads(body)["error"]
        article = {"id": "ferry-1", "title": "Night ferry", "paragraphs": ["The quokka ferry sails at midnight."]}
        status, _, body = get(base + "/api/documents", data=json.dumps(article).encode(), method="POST",
                              headers={"Content-Type": "application/json", "Authorization": "Bearer s3cret"})
        assert status == 201, body
        deadline, seen = time.time() + 20, []
        while time.time() < deadline:  # every request (whichever worker takes it) finds the new document
            seen = [json.loads(get(base + "/api/search?q=quokka+ferry&k=1")[2])["results"] for _ in range(12)]
            if all(r and r[0]["doc_id"] == "ferry-1" for r in seen):
                break
            time.sleep(0.1)
        assert all(r and r[0]["doc_id"] == "ferry-1" for r in seen)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenMP's default is one thread on one core")
def test_request_threads_run_faiss_on_one_thread():
    # a request thread is started after FAISS loads, so it takes OpenMP's default team, not the loader's setting
    code = ("from qa.process import one_thread_per_request; one_thread_per_request()\n"
            "import faiss, threading\n"
            "faiss.omp_set_num_threads(3)  # the loading thread's own setting must not matter\n"
            "seen = []\n"
            "t = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads())); t.start(); t.join()\n"
            "print(seen[0])")
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
