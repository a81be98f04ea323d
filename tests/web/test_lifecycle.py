"""Lifecycle of a served index, with real processes on loopback and no mocks: killed rebuilds, live reload while
queries run, the admin API, hostile input on every endpoint, concurrent writers, and a schemathesis run; all on
indexes built with the hash embedder (the model is not the subject)."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import ENV, QA, SEEDS, SQUAD, WOMBAT, ZEBRA, copy_index, http, make_app, serve, wait_for, write_jsonl

HASH = ("--model", "hash")  # builds with the hash embedder, as the served indexes were built
CHINA = "what actions has China taken?"
TOKEN = "lifecycle-secret-token"
RELOAD = 0.2  # QA_RELOAD_INTERVAL of the servers whose reloads a test waits out


# --- helpers -----------------------------------------------------------------------------------------------

def request(url, data=None, headers=None, method=None, timeout=30):
    """(status, content type, body bytes) of one HTTP request; HTTP errors are answers, not exceptions."""
    r = http(url, data, headers, method, timeout)
    return r.status, r.headers.get("Content-Type", ""), r.body


def get_json(url, **kw):
    status, _, body = request(url, **kw)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def url(base, path, **params):
    return base + path + ("?" + urllib.parse.urlencode(params) if params else "")


def qa(*args, check=True, timeout=600):
    p = subprocess.run([QA, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"qa {' '.join(args)} exited {p.returncode}: {p.stderr[-1500:]}"
    return p


def passages(base) -> int:
    return get_json(base + "/healthz")[1]["passages"]


def finds(base, question, needle) -> bool:
    status, body = get_json(url(base, "/api/search", q=question, k=3))
    assert status == 200, body
    return any(needle in r["text"] for r in body["results"])


def finds_zebra(base) -> bool:
    return finds(base, "how many zebra crossings were painted in Quokka Town?", "zebra crossings")


def assert_serves_seed(base):
    status, body = get_json(url(base, "/api/search", q=CHINA, k=15))
    assert status == 200 and len(body["results"]) == 15, (status, body and len(body.get("results", [])))
    assert passages(base) == 15


class QueryLoad:
    """Threads that query the server in a loop, recording every failed or empty answer."""

    def __init__(self, base, threads=4, max_seconds=120):
        self.base, self.n, self.max_seconds = base, threads, max_seconds
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.count = 0
        self._lock = threading.Lock()

    def _run(self, i):
        target = url(self.base, "/api/search", q=CHINA, k=3) if i % 2 == 0 else url(self.base, "/api/ask", q=CHINA)
        key = "results" if i % 2 == 0 else "passages"
        t_end = time.time() + self.max_seconds
        while not self.stop.is_set() and time.time() < t_end:
            try:
                status, body = get_json(target)
                ok = status == 200 and body and body.get(key)
                problem = None if ok else f"{status} {str(body)[:200]}"
            except Exception as e:  # a dropped connection is a failure too
                problem = f"{type(e).__name__}: {e}"
            with self._lock:
                self.count += 1
                if problem:
                    self.failures.append(problem)

    def __enter__(self):
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.n)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        if exc[0] is None:
            assert self.count > 0
            assert not self.failures, f"{len(self.failures)} of {self.count} queries failed: {self.failures[:5]}"


# --- 1. a killed rebuild leaves the served index intact ------------------------------------------------------

def _kill_build(index_dir, when, tmp_path):
    source = os.path.join(SQUAD, "articles.jsonl")
    if when == "writing":  # a few articles, so that the build reaches its writes soon
        with open(source, encoding="utf-8") as f:
            head = [next(f) for _ in range(4)]
        source = os.path.join(str(tmp_path), "squad-head.jsonl")
        with open(source, "w", encoding="utf-8") as f:
            f.writelines(head)
    p = subprocess.Popen([QA, "build", SEEDS, source, "--index-dir", index_dir, *HASH],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        # mid-embedding: half a second after the build folder appeared (batches of embedded paragraphs go to the
        # build's store as they come, the vector and lexical indexes after the last; the hash embedder takes seconds
        # over this source's first batch); writing: the moment the store appears
        target = ".build-*" if when == "embedding" else os.path.join(".build-*", "store.sqlite")
        while not glob.glob(os.path.join(index_dir, target)):
            assert p.poll() is None and time.time() < deadline, f"the build never made {target}"
            time.sleep(0.01)
        if when == "embedding":
            time.sleep(0.5)
            done = [glob.glob(os.path.join(index_dir, ".build-*", name)) for name in ("vectors.faiss", "lexical")]
            assert not any(done), "embedding already done"
        assert p.poll() is None, "the build finished before it could be killed; use a bigger source"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.mark.slow  # servers and `qa` processes, seconds each
@pytest.mark.parametrize("when", ["embedding", "writing"])
def test_killed_rebuild_leaves_the_index_intact(live_server, fake_seed_copy, when, tmp_path):
    with live_server(fake_seed_copy, {"QA_RELOAD_INTERVAL": str(RELOAD)}) as base:
        assert_serves_seed(base)
        with QueryLoad(base, threads=2, max_seconds=300):
            _kill_build(fake_seed_copy, when, tmp_path)
        time.sleep(2.5 * RELOAD)  # more than two reload intervals
        assert_serves_seed(base)
    assert glob.glob(os.path.join(fake_seed_copy, ".build-*")), "expected the killed build's leftovers"
    assert qa("check", "--index-dir", fake_seed_copy).returncode == 0
    with live_server(fake_seed_copy) as base:  # a fresh server on the same folder
        assert_serves_seed(base)
    # the leftovers break neither writes nor the next build
    qa("add", write_jsonl(tmp_path, ZEBRA), "--index-dir", fake_seed_copy)
    qa("remove", ZEBRA["id"], "--index-dir", fake_seed_copy)
    qa("build", SEEDS, "--index-dir", fake_seed_copy, *HASH)
    assert qa("check", "--index-dir", fake_seed_copy).returncode == 0
    with live_server(fake_seed_copy) as base:
        assert_serves_seed(base)


# --- 2. live reload without a restart, while queries run -----------------------------------------------------

@pytest.mark.slow  # servers and `qa` processes, seconds each
def test_live_reload_while_queries_run(live_server, fake_seed_copy, tmp_path):
    zebra = write_jsonl(tmp_path, ZEBRA)
    with live_server(fake_seed_copy, {"QA_RELOAD_INTERVAL": str(RELOAD)}) as base:
        n0 = passages(base)
        with QueryLoad(base, threads=4, max_seconds=240):
            qa("add", zebra, "--index-dir", fake_seed_copy)
            assert wait_for(lambda: finds_zebra(base), 10), "the server did not see `qa add`"
            assert passages(base) == n0 + 2
            qa("add", zebra, "--index-dir", fake_seed_copy)  # the same article again: unchanged
            time.sleep(3 * RELOAD)  # three reload intervals
            assert passages(base) == n0 + 2
            qa("remove", ZEBRA["id"], "--index-dir", fake_seed_copy)
            assert wait_for(lambda: not finds_zebra(base), 10), "the server still finds a removed article"
            assert passages(base) == n0
            # a full rebuild into the served folder
            qa("build", SEEDS, zebra, "--index-dir", fake_seed_copy, *HASH)
            assert wait_for(lambda: passages(base) == n0 + 2, 10), "the server did not switch to the rebuilt index"
            assert finds_zebra(base)
            qa("build", SEEDS, "--index-dir", fake_seed_copy, *HASH)  # and back, pruning the first rebuild's folder
            assert wait_for(lambda: passages(base) == n0, 10)
    assert qa("check", "--index-dir", fake_seed_copy).returncode == 0


# --- 3. the admin API ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def admin_server(tmp_path_factory, live_server, fake_seed_index_dir):
    dst = copy_index(fake_seed_index_dir, str(tmp_path_factory.mktemp("admin") / "index"))
    with live_server(dst, {"QA_ADMIN_TOKEN": TOKEN, "QA_RELOAD_INTERVAL": "0.5"}) as base:
        yield base


def _auth(token=TOKEN):
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


def _assert_json_error(status, ctype, body, expected):
    assert status == expected, (status, body[:300])
    assert "json" in ctype and json.loads(body)["error"], (ctype, body[:300])


def test_admin_api_with_token(admin_server):
    base = admin_server
    n0 = passages(base)
    doc = json.dumps(ZEBRA).encode()
    for headers in ({"Content-Type": "application/json"}, _auth("wrong"), _auth(TOKEN + "x"),
                    {"Content-Type": "application/json", "Authorization": TOKEN},
                    {"Content-Type": "application/json", "Authorization": "Basic " + TOKEN}):
        _assert_json_error(*request(base + "/api/documents", doc, headers, "POST"), 401)
        _assert_json_error(*request(base + "/api/documents/" + ZEBRA["id"], None, headers, "DELETE"), 401)
    assert not finds_zebra(base)
    status, _, body = request(base + "/api/documents", doc, _auth(), "POST")
    assert status == 201 and json.loads(body)["status"] == "created", body
    assert finds_zebra(base) and passages(base) == n0 + 2
    status, _, body = request(base + "/api/documents", doc, _auth(), "POST")  # idempotent
    assert status == 200 and json.loads(body)["status"] == "unchanged" and passages(base) == n0 + 2
    assert get_json(base + "/api/documents/" + ZEBRA["id"])[1]["id"] == ZEBRA["id"]
    status, _, body = request(base + "/api/documents/" + ZEBRA["id"], None, _auth(), "DELETE")
    assert status == 200 and json.loads(body)["status"] == "deleted"
    assert not finds_zebra(base) and passages(base) == n0
    _assert_json_error(*request(base + "/api/documents/" + ZEBRA["id"], None, _auth(), "DELETE"), 404)
    _assert_json_error(*request(base + "/api/documents/no-such-doc", None, _auth(), "DELETE"), 404)
    _assert_json_error(*request(base + "/api/documents/" + ZEBRA["id"]), 404)


@pytest.mark.slow  # servers and `qa` processes, seconds each
def test_milvus_lite_index_served_and_updated_live(live_server, tmp_path):
    """A real `qa serve` on a Milvus Lite index: it answers, admin writes show up live under query load (the server
    holds the Lite database, so writes go through its API), and the folder checks clean once it stops."""
    pytest.importorskip("milvus_lite")
    index_dir = str(tmp_path / "index")
    qa("build", SEEDS, "--index-dir", index_dir, "--backend", "milvus", "--quiet", *HASH)
    with live_server(index_dir, {"QA_ADMIN_TOKEN": TOKEN, "QA_RELOAD_INTERVAL": "0.5"}) as base:
        assert_serves_seed(base)
        with QueryLoad(base, threads=2, max_seconds=120):
            status, _, body = request(base + "/api/documents", json.dumps(ZEBRA).encode(), _auth(), "POST")
            assert status == 201, body
            assert finds_zebra(base) and passages(base) == 17
            status, body = get_json(url(base, "/api/search", q="zebra crossings", k=3, doc_id=ZEBRA["id"]))
            assert status == 200 and {r["doc_id"] for r in body["results"]} == {ZEBRA["id"]}  # pushed-down filter
            status, _, body = request(base + "/api/documents/" + ZEBRA["id"], None, _auth(), "DELETE")
            assert status == 200, body
            assert not finds_zebra(base) and passages(base) == 15
    assert qa("check", "--index-dir", index_dir).returncode == 0


def test_admin_api_off_without_token(live_server, fake_seed_index_dir):
    with live_server(fake_seed_index_dir, {"QA_ADMIN_TOKEN": ""}) as base:
        doc = json.dumps(ZEBRA).encode()
        for headers in ({"Content-Type": "application/json"}, _auth()):
            _assert_json_error(*request(base + "/api/documents", doc, headers, "POST"), 403)
            _assert_json_error(*request(base + "/api/documents/000_17ba8289838f2219", None, headers, "DELETE"),
                               403)
        assert passages(base) == 15


# --- 4. hostile input, on every endpoint ---------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
BIG = b'{"q": "' + b"x" * (2 * 1024 * 1024) + b'"}'


def _hostile_cases():
    cases = []
    for ep in ("/api/search", "/api/ask"):
        for qs in ("", "q=", "q=+++", "q=" + "x" * 5000, "q=%ff%fe%00", "q=a%00b", "q=%ff",
                   "q=china&k=0", "q=china&k=-1", "q=china&k=101", "q=china&k=abc", "q=china&k=1e9",
                   "q=china&k=1.5", "q=china&k=%ff", "q=china&k=99999999999999999999", "q=china&q=again",
                   "q=china&mode=bogus", "q=china&published_after=not-a-date", "q=china&source=" + "s" * 600,
                   "q=china&doc_id=%00"):
            cases.append(("GET", ep + ("?" + qs if qs else ""), None, {}, 400))
        for body in (b"", b"{not json", b"\xff\xfe\x00", b'{"q": 5}', b'{"q": null}', b'{"q": ["a"]}',
                     b'{"q": {"a": 1}}', b"[]", b'"china"', b"5", b'{"q": "   "}', b'{"q": "a\\u0000b"}',
                     b'{"q": "china", "k": "abc"}', b'{"q": "china", "k": 1e9}', b'{"q": "china", "k": 0}',
                     b'{"q": "china", "k": true}', b'{"q": "china", "k": 2.5}', b'{"q": "china", "extra": 1}',
                     b'{"q": "china", "mode": 7}', b'{"q": "china", "source": 7}',
                     b'{"q": "china", "published_before": 20200101}', b'{"q": "' + b"x" * 5000 + b'"}'):
            cases.append(("POST", ep, body, JSON, 400))
        cases.append(("POST", ep, b'{"q": "china"}', {"Content-Type": "text/plain"}, None))  # forced JSON: 200
        cases.append(("POST", ep, BIG, JSON, 413))
        cases.append(("PUT", ep, b"{}", JSON, 405))
    for qs in ("offset=%ff", "offset=-1", "limit=0", "limit=1001", "limit=abc", "offset=1e9", "limit=%ff",
               "offset=%00"):
        cases.append(("GET", "/api/documents?" + qs, None, {}, 400))
    for doc_id in ("..%5C..%5Cwindows", "no-such-doc", "a" * 400):
        cases.append(("GET", "/api/documents/" + doc_id, None, {}, 404))
        cases.append(("DELETE", "/api/documents/" + doc_id, None, _auth(), 404))
        cases.append(("DELETE", "/api/documents/" + doc_id, None, {}, 401))
    # ids a URL cannot carry (a client removes dot segments, a proxy merges slashes) are refused by the id rule
    for doc_id in ("a%00b", "a" * 600, "%ff%fe", "a%c3", "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd",
                   "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2Fvictim", "/victim", "a//b", "a/./b", "."):
        cases.append(("GET", "/api/documents/" + doc_id, None, {}, 400))
        cases.append(("DELETE", "/api/documents/" + doc_id, None, _auth(), 400))
    for body in (b"", b"{not json", b"\xff\xfe", b"[]", b'{"id": 5, "title": "t", "paragraphs": ["p"]}',
                 b'{"id": "x", "title": "", "paragraphs": ["p"]}', b'{"id": "x", "title": "t"}',
                 b'{"id": "x", "title": "t", "paragraphs": "p"}', b'{"id": "x", "title": "t", "paragraphs": [1]}',
                 b'{"id": "a\\u0000b", "title": "t", "paragraphs": ["p"]}',
                 b'{"id": "' + b"i" * 600 + b'", "title": "t", "paragraphs": ["p"]}',
                 b'{"id": "x", "title": "t", "paragraphs": ["p"], "published": "yesterday-ish"}',
                 b'{"id": "x", "title": "t", "paragraphs": ["p"], "tags": [1]}',
                 # NUL refused in every field, as in queries; dates must be calendar days (one rule everywhere)
                 b'{"id": "x", "title": "t\\u0000", "paragraphs": ["A paragraph about the harbour council."]}',
                 b'{"id": "x", "title": "t", "paragraphs": ["A paragraph about the harbour\\u0000 council."]}',
                 b'{"id": "x", "title": "t", "paragraphs": ["A paragraph about the harbour council."], '
                 b'"published": "2024-02-30"}',
                 b'{"id": "x", "title": "t", "paragraphs": ["A paragraph about the harbour council."], '
                 b'"published": "2024-13-45"}'):
        cases.append(("POST", "/api/documents", body, _auth(), 400))
    for ep in ("/api/search", "/api/ask"):
        for date in ("2024-02-30", "2024-13-45", "2023-02-29"):
            cases.append(("GET", f"{ep}?q=china&published_after={date}", None, {}, 400))
            cases.append(("POST", ep, b'{"q": "china", "published_before": "%s"}' % date.encode(), JSON, 400))
    cases.append(("POST", "/api/documents", BIG, _auth(), 413))
    cases.append(("POST", "/api/documents", BIG, JSON, 401))
    cases.append(("POST", "/api/documents", b"{}", JSON, 401))
    cases.append(("GET", "/api/nope", None, {}, 404))
    cases.append(("POST", "/healthz", b"{}", JSON, 405))
    cases.append(("DELETE", "/openapi.json", None, {}, 405))
    return cases


HOSTILE = _hostile_cases()


@pytest.mark.parametrize("method,path,body,headers,expected", HOSTILE,
                         ids=[f"{m} {p[:50]} {(b or b'')[:30]!r}" for m, p, b, h, _ in HOSTILE])
def test_hostile_input_is_a_json_4xx(admin_server, method, path, body, headers, expected):
    status, ctype, raw = request(admin_server + path, body, headers, method)
    if expected is None:
        assert status == 200, raw[:300]
        return
    assert 400 <= status < 500, (status, raw[:300])
    assert status == expected, (status, raw[:300])
    assert "application/json" in ctype, (ctype, raw[:300])
    assert isinstance(json.loads(raw)["error"], str)


def test_hostile_input_left_the_index_alone(admin_server):
    assert_serves_seed(admin_server)
    assert get_json(admin_server + "/api/documents")[1]["total"] == 1


# --- 4b. hostile input on both server shapes: one process, and two worker processes ----------------------------

@pytest.fixture(scope="module", params=["one worker", "two workers"])
def any_server(request, tmp_path_factory, fake_seed_index_dir):
    dst = copy_index(fake_seed_index_dir, str(tmp_path_factory.mktemp("hostile") / "index"))
    args = ("--workers", "2", "--threads", "2") if request.param == "two workers" else ()
    with serve(dst, {"QA_ADMIN_TOKEN": TOKEN, "QA_RELOAD_INTERVAL": "0.5"}, *args) as base:
        yield request.param, base


def _doc(doc_id="hx", **fields):
    return json.dumps({"id": doc_id, "title": "Harbour", "paragraphs": ["The harbour council met on Monday.",
                                                                       "It voted for a new ferry pier."], **fields})


# (endpoint, JSON body with a lone surrogate or NUL somewhere, the field the 400 must name)
INVALID_TEXT = [
    ("/api/search", '{"q": "\\ud800x"}', '"q"'),
    ("/api/search", '{"q": "\\ud800x", "mode": "lexical"}', '"q"'),
    ("/api/ask", '{"q": "\\udfffx"}', '"q"'),
    ("/api/search", '{"q": "china", "source": "\\ud800"}', '"source"'),
    ("/api/ask", '{"q": "china", "doc_id": "a\\ud800"}', '"doc_id"'),
    ("/api/search", '{"q": "china", "published_after": "\\ud800"}', '"published_after"'),
    ("/api/search", '{"q": "china", "\\ud800": 1}', "field name"),
    ("/api/documents", _doc("\ud800"), '"id"'),
    ("/api/documents", _doc(title="T\ud800"), '"title"'),
    ("/api/documents", _doc(paragraphs=["ok paragraph here.", "bad \udc80 paragraph"]), '"paragraphs[1]"'),
    ("/api/documents", _doc(source="\ud800"), '"source"'),
    ("/api/documents", _doc(author="\ud800"), '"author"'),
    ("/api/documents", _doc(tags=["ok", "\ud800"]), '"tags[1]"'),
    ("/api/documents", _doc(published="\ud800"), '"published"'),
    ("/api/documents", _doc(title="T\u0000"), '"title"'),
    ("/api/documents", _doc(paragraphs=["a harbour \u0000 paragraph"]), '"paragraphs[0]"'),
]


@pytest.mark.slow
@pytest.mark.parametrize("path,body,field", INVALID_TEXT, ids=[f"{p} {f}" for p, _, f in INVALID_TEXT])
def test_invalid_text_is_a_400_naming_the_field(any_server, path, body, field):
    _, base = any_server
    status, ctype, raw = request(base + path, body.encode(), _auth(), "POST")
    assert status == 400 and "application/json" in ctype, (status, raw[:300])
    assert field in json.loads(raw)["error"], raw[:300]


def test_ids_round_trip_and_no_request_reaches_another_document(any_server):
    _, base = any_server
    assert request(base + "/api/documents", _doc("victim").encode(), _auth(), "POST")[0] in (200, 201)
    for doc_id in ("/victim", "victim/", "a//victim", "./victim", "x/../victim"):
        if doc_id != "victim/":
            _assert_json_error(*request(base + "/api/documents", _doc(doc_id).encode(), _auth(), "POST"), 400)
    for path in ("/api/documents/%2Fvictim", "/api/documents//victim", "/api/documents/x/../victim",
                 "/api/documents/.%2Fvictim"):
        for method in ("GET", "DELETE"):
            status, ctype, raw = request(base + path, None, _auth(), method)
            assert status == 400 and "json" in ctype, (method, path, status, raw[:200])  # never a redirect
    assert get_json(base + "/api/documents/victim")[0] == 200  # untouched
    # an accepted id with slashes, a trailing slash and odd characters round-trips by GET and DELETE
    for doc_id in ("victim/", "a/b/c", "sp ace?#%&x"):
        assert request(base + "/api/documents", _doc(doc_id).encode(), _auth(), "POST")[0] == 201
        quoted = urllib.parse.quote(doc_id, safe="")
        assert get_json(base + "/api/documents/" + quoted)[1]["id"] == doc_id
        assert request(base + "/api/documents/" + quoted, None, _auth(), "DELETE")[0] == 200
    assert request(base + "/api/documents/victim", None, _auth(), "DELETE")[0] == 200


def _raw_http(base, data: bytes) -> tuple[int, str, bytes]:
    """(status, content type, body) of a hand-written request, for what urllib will not send."""
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    ctype = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), ctype, body


def test_malformed_chunked_body_is_a_400(any_server):
    _, base = any_server
    data = (b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nxx\r\n0\r\n\r\n")
    status, ctype, body = _raw_http(base, data)
    assert status == 400 and "json" in ctype and json.loads(body)["error"], (status, body[:300])  # the app's JSON


def test_page_and_paths_answer_like_the_api(any_server):
    _, base = any_server
    status, ctype, body = request(base + "/?q=%ff")
    assert status == 400 and "text/html" in ctype and b"not valid UTF-8" in body  # as the API's 400
    for path in ("//api/search?q=china", "/api//search?q=china"):
        # never a redirect to another path (werkzeug's merge_slashes)
        status, ctype, body = request(base + path)
        assert status in (200, 404) and "json" in ctype, (path, status, body[:200])


@pytest.mark.parametrize("link", [" JaVaScRiPt:alert(1)", "java\tscript:alert(1)", "data:text/html,x",
                                  "//evil.example/x", "https:no-host"])
@pytest.mark.slow
def test_only_http_urls_become_links(any_server, link):
    _, base = any_server
    doc = json.dumps({"id": "linky", "title": "Quokka ferry timetable", "url": link,
                      "paragraphs": ["The quokka ferry timetable changes on Monday for the winter."]})
    assert request(base + "/api/documents", doc.encode(), _auth(), "POST")[0] in (200, 201)
    try:
        def page():  # every worker has reloaded the index holding it (one worker took the write)
            return request(url(base, "/", q="quokka ferry timetable"))[2].decode()

        assert wait_for(lambda: all("Quokka ferry timetable" in page() for _ in range(4)))
        hrefs = re.findall(r'href="([^"]*)"', page())  # every link of the page: its own paths, or http(s)
        assert hrefs and all(h.startswith(("/", "#", "http://", "https://")) for h in hrefs), hrefs
        assert not any("evil.example" in h or "no-host" in h for h in hrefs), hrefs
    finally:
        request(base + "/api/documents/linky", None, _auth(), "DELETE")


# --- 4c. a full or read-only disk, a damaged index, a blank token (hash-model indexes) --------------------------

@pytest.fixture()
def small_disk(tmp_path):
    """An 8 MiB tmpfs mounted for the test (root only: skipped where mounting is not permitted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + p.stderr.strip())
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_disk(folder: str, leave_kib: int) -> str:
    """A file that leaves about `leave_kib` KiB free on `folder`'s file system."""
    st = os.statvfs(folder)
    path = os.path.join(folder, "filler")
    with open(path, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_kib * 1024))
    return path


def _big_article(doc_id="big", n=3000):
    return {"id": doc_id, "title": "Harbour minutes",
            "paragraphs": [f"Minute {i}: the harbour council discussed crossing {i} near the ferry." for i in range(n)]}


def _one_line_error(p) -> str:
    """The command's one error line (log warnings may come before it)."""
    lines = [line for line in p.stderr.strip().splitlines() if not line.startswith("WARNING ")]
    assert p.returncode == 3 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("leave_kib,n", [(300, 1000), (150, 3)], ids=["store-full", "vectors-full"])
def test_full_disk_is_a_507_and_the_index_stays_whole(small_disk, tmp_path, leave_kib, n):
    """store-full: the store's transaction fails and rolls back; vectors-full: the store commits, the vector file
    (rewritten whole) does not fit: readers rebuild it from the store, and the write run again finishes it.
    Sizes: 1000 paragraphs take over 1.5 MB in the store and 500 over 750 KB of vectors, several times the space
    left."""
    index_dir = os.path.join(small_disk, "index")
    qa("build", SEEDS, write_jsonl(tmp_path, _big_article("base", 500)), "--model", "hash", "--index-dir",
       index_dir, "--quiet")
    filler = _fill_disk(small_disk, leave_kib)
    article = json.dumps(_big_article("big", n)).encode()
    with serve(index_dir, {"QA_ADMIN_TOKEN": TOKEN}) as base:
        n0 = passages(base)
        status, ctype, body = request(base + "/api/documents", article, _auth(), "POST")
        assert status == 507 and "json" in ctype and "disk is full" in json.loads(body)["error"], body[:300]
        status, body = get_json(url(base, "/api/search", q="harbour council", k=3))
        assert status == 200 and body["results"]  # still serving
        assert passages(base) in (n0, n0 + n)  # all of the write or none of it
        line = _one_line_error(qa("add", write_jsonl(tmp_path, _big_article("big2", 1000)), "--index-dir",
                                  index_dir, check=False))
        assert "disk is full" in line and index_dir in line
        line = _one_line_error(qa("build", SEEDS, write_jsonl(tmp_path, _big_article("big3", 1000)), "--model",
                                  "hash", "--index-dir", index_dir, "--quiet", check=False))
        assert "disk is full" in line
        os.unlink(filler)
        # the same write again once there is space completes it and leaves the folder whole
        assert request(base + "/api/documents", article, _auth(), "POST")[0] in (200, 201)
        assert qa("check", "--index-dir", index_dir).returncode == 0
        assert passages(base) == n0 + n and finds(base, f"harbour council crossing {n - 1}", f"crossing {n - 1}")


@pytest.mark.slow
def test_read_only_disk_is_a_507_and_still_serves(small_disk, tmp_path):
    index_dir = os.path.join(small_disk, "index")
    qa("build", SEEDS, "--model", "hash", "--index-dir", index_dir, "--quiet")
    subprocess.run(["mount", "-o", "remount,ro", small_disk], check=True)
    with serve(index_dir, {"QA_ADMIN_TOKEN": TOKEN}) as base:
        assert_serves_seed(base)
        status, ctype, body = request(base + "/api/documents", json.dumps(_big_article(n=3)).encode(), _auth(), "POST")
        assert status == 507 and "read-only" in json.loads(body)["error"], body[:300]
        status, ctype, body = request(base + "/api/documents/000_17ba8289838f2219", None, _auth(), "DELETE")
        assert status == 507 and "read-only" in json.loads(body)["error"], body[:300]
        assert_serves_seed(base)
    for args in (("add", write_jsonl(tmp_path, _big_article(n=3))), ("remove", "000_17ba8289838f2219"),
                 ("build", SEEDS, "--model", "hash", "--quiet")):
        assert "read-only" in _one_line_error(qa(*args, "--index-dir", index_dir, check=False))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["vectors.faiss", os.path.join("lexical", "meta.json")])
def test_damaged_files_make_health_degraded(tmp_path, damage):
    index_dir = str(tmp_path / "index")
    qa("build", SEEDS, "--model", "hash", "--index-dir", index_dir, "--quiet")
    with serve(index_dir) as base:
        assert get_json(base + "/healthz")[1]["status"] == "ok"
    (data,) = glob.glob(os.path.join(index_dir, "data-*"))
    with open(os.path.join(data, damage), "wb") as f:
        f.write(b"garbage")
    with serve(index_dir) as base:
        status, body = get_json(base + "/healthz")
        assert status == 200 and body["status"] == "degraded", body
        assert body["reasons"] and ("vector" if damage == "vectors.faiss" else "lexical") in body["reasons"][0]
        assert_serves_seed(base)  # from what it rebuilt out of the store


@pytest.mark.slow
def test_blank_admin_token_leaves_the_admin_api_off(tmp_path):
    index_dir = str(tmp_path / "index")
    qa("build", SEEDS, "--model", "hash", "--index-dir", index_dir, "--quiet")
    logs = []
    with serve(index_dir, {"QA_ADMIN_TOKEN": " \t"}, logs=logs) as base:
        for headers in (_auth(" "), _auth(""), {"Authorization": "Bearer  \t", **JSON}):
            _assert_json_error(*request(base + "/api/documents", _doc().encode(), headers, "POST"), 403)
    assert "QA_ADMIN_TOKEN is blank" in logs[0]


# --- 5. concurrent writers are serialised --------------------------------------------------------------------

@pytest.mark.slow  # servers and `qa` processes, seconds each
def test_concurrent_writers(live_server, fake_seed_copy, tmp_path):
    paths = [write_jsonl(tmp_path, ZEBRA), write_jsonl(tmp_path, WOMBAT)]
    procs = [subprocess.Popen([QA, "add", p, "--index-dir", fake_seed_copy], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in paths]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-1500:]
    assert qa("check", "--index-dir", fake_seed_copy).returncode == 0
    stats = json.loads(qa("stats", "--index-dir", fake_seed_copy, "--json").stdout)
    assert stats["counts"]["documents"] == 3 and stats["counts"]["passages"] == 19, stats
    with live_server(fake_seed_copy) as base:
        assert finds_zebra(base)
        assert finds(base, "how many wombats crossed the bridge?", "wombats")
        ids = {d["id"] for d in get_json(base + "/api/documents")[1]["documents"]}
        assert ids == {"000_17ba8289838f2219", ZEBRA["id"], WOMBAT["id"]}


# --- 6. schemathesis, in-process against the Flask app -------------------------------------------------------

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from qa.web.openapi import openapi_spec  # noqa: E402

OPERATIONS = [f"{method.upper()} {path}" for path, ops in openapi_spec()["paths"].items() for method in ops
              if path != "/openapi.json"]  # schemathesis leaves out the document's own path


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, fake_seed_index_dir):
    from qa.embed import HashEmbedder

    dst = copy_index(fake_seed_index_dir, str(tmp_path_factory.mktemp("fuzz") / "index"))
    app = make_app(dst, HashEmbedder(), admin_token=None)  # the admin writes must answer 403
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


# schemathesis' own pytest plugin (`from_fixture(...).parametrize()`) does not run under pytest 9, so each
# operation's hypothesis strategy is driven here directly, valid and invalid data alike.
@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
@pytest.mark.parametrize("label", OPERATIONS)
def test_api_matches_its_openapi_document(api_schema, label, mode):
    operation = next(r.ok() for r in api_schema.get_all_operations() if r.ok().label == label)
    admin_write = operation.method.upper() in ("POST", "DELETE") and operation.path.startswith("/api/documents")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        response = case.call()
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        if admin_write:
            # with the admin API off every write is refused, except a blank id, which routes nowhere (404)
            blank_id = (case.path_parameters or {}).get("doc_id") == ""
            assert response.status_code in (400, 403, 413) + ((404,) if blank_id else ()), \
                (response.status_code, response.text[:300])
        assert response.status_code < 500

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip("no invalid input exists for this operation (e.g. any string is a valid path parameter)")
