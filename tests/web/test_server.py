"""A real `qa serve` (granian) on a loopback port, driven over HTTP."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ENV, QA, http as get


@pytest.mark.slow
def test_health_and_search_over_http(seed_server):
    status, headers, body = get(seed_server + "/healthz")
    assert status == 200 and json.loads(body)["passages"] == 15
    status, headers, body = get(seed_server + "/api/search?q=what+actions+has+China+taken%3F&k=3")
    res = json.loads(body)["results"]
    assert status == 200 and any("enforcement actions" in r["text"] or "Narcotics Control Board" in r["text"]
                                 for r in res)
    assert headers["Server"] == "qa"  # not the HTTP server's name and version


def test_errors_over_http_are_json(fake_server):
    for path in ("/api/search", "/api/search?q=china&k=abc", "/api/nope"):
        status, headers, body = get(fake_server + path)
        assert 400 <= status < 500 and "json" in headers["Content-Type"] and json.loads(body)["error"]


def test_a_body_over_the_limit_gets_its_413_not_a_reset(fake_server):
    # the app answers before reading the body: the server must still take it in, or the client, still sending,
    # sees a broken pipe (three times in four here before it did)
    big = b'{"q": "' + b"x" * (2 << 20) + b'"}'
    for _ in range(12):
        status, headers, body = get(fake_server + "/api/search", data=big, method="POST",
                                    headers={"Content-Type": "application/json"})
        assert status == 413 and json.loads(body)["error"]
    host, port = fake_server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:  # chunked, no Content-Length: werkzeug stops reading at the limit, which is still a 413
        conn.request("POST", "/api/search", body=iter([big[:1 << 20], big[1 << 20:]]), encode_chunked=True,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"]
        conn.request("POST", "/api/search", body=iter([b'{"q": "china",', b' "k": 1}']), encode_chunked=True,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["results"]) == 1
    finally:
        conn.close()


def test_page_is_escaped_and_secured(fake_server):
    status, headers, body = get(fake_server + "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    html = body.decode()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "Content-Security-Policy" in headers and headers["X-Content-Type-Options"] == "nosniff"


def test_binds_loopback_by_default(fake_server):
    assert fake_server.startswith("http://127.0.0.1:")


def test_workers_serve_and_reload(live_server, fake_seed_copy):
    """`--workers 2`: two processes, each with its own model and index; a write reaches every worker."""
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


def test_workers_count_their_requests_in_slots_they_share(live_server, fake_seed_index_dir):
    """Each worker takes its own slot of the counts made before the fork: had the map not been shared, both would
    have taken the first slot of a private copy."""
    logs: list[str] = []
    with live_server(fake_seed_index_dir, {}, "--workers", "2", logs=logs, verbose=True) as base:
        for _ in range(10):
            assert get(base + "/api/search?q=China&k=1")[0] == 200
    claims = dict(re.findall(r"worker (\d+): its requests in flight counted in slot (\d+) of 6", logs[0]))
    assert len(claims) == 2 and len(set(claims.values())) == 2, logs[0][-2000:]


def _server_processes(port: int) -> dict[int, int]:
    """pid -> parent pid of the `qa serve` processes (supervisor and workers) started with `--port port`."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"serve" in args and b"--port" in args and args[args.index(b"--port") + 1] == str(port).encode():
            found[int(pid)] = parent
    return found


def test_a_worker_that_dies_is_replaced(live_server, fake_seed_copy):
    with live_server(fake_seed_copy) as base:
        port = int(base.rsplit(":", 1)[1])
        procs = _server_processes(port)
        workers = [pid for pid, parent in procs.items() if parent in procs]
        assert len(procs) == 2 and len(workers) == 1, procs
        os.kill(workers[0], signal.SIGKILL)
        deadline, status = time.time() + 60, None
        while time.time() < deadline:
            try:
                status = get(base + "/api/search?q=china&k=1")[0]
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
        assert workers[0] not in _server_processes(port) and len(_server_processes(port)) == 2


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_taken_port_is_refused_in_one_line(tmp_path, reuse_port):
    """The server's workers bind with SO_REUSEPORT: a second server must not share a taken port in silence, whether
    its listener is another program's or another `qa serve`'s."""
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([QA, "serve", "--index-dir", str(tmp_path / "index"), "--port", str(port)], env=ENV,
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


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
