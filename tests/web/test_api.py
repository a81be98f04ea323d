"""The API on the seed article: with the real model where answers and rankings are checked (`slow`),
with the hash embedder where only their shapes are."""
import pytest

CHINA = "what actions has China taken?"
ANSWERING = ("enforcement actions", "International Narcotics Control Board")


@pytest.mark.slow
def test_search_finds_china_actions_with_full_citations(client):
    r = client.get("/api/search", query_string={"q": CHINA, "k": 3})
    assert r.status_code == 200
    body = r.get_json()
    assert body["query"] == CHINA and isinstance(body["took_ms"], float)
    assert any(any(s in x["text"] for s in ANSWERING) for x in body["results"])
    for rank, x in enumerate(body["results"], 1):
        assert x["rank"] == rank and x["passage_id"] == f"{x['doc_id']}#{x['paragraph_index']}"
        c = x["citation"]
        assert c["title"].startswith("US says fentanyl") and c["source"] == "Reuters"
        assert c["author"] == "Antoni Slodkowski" and c["char_end"] - c["char_start"] == len(x["text"])
        assert set(x["scores"]) >= {"dense", "lexical", "fused"}
    assert set(body["timings"]) == {"embed_ms", "dense_ms", "lexical_ms", "fuse_ms"}


def test_post_search_equals_get(fake_client):
    a = fake_client.get("/api/search", query_string={"q": CHINA, "k": 5}).get_json()
    b = fake_client.post("/api/search", json={"q": CHINA, "k": 5}).get_json()
    assert [x["passage_id"] for x in a["results"]] == [x["passage_id"] for x in b["results"]]


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_modes(fake_client, mode):
    body = fake_client.get("/api/search", query_string={"q": "Daskal International Narcotics Control Board",
                                                    "mode": mode}).get_json()
    assert body["mode"] == mode and body["results"]


@pytest.mark.slow
def test_rare_name_and_paraphrase_both_surface(client):
    rare = client.get("/api/search", query_string={"q": "Slodkowski Daskal interview embassy", "k": 3}).get_json()
    assert any("embassy in Beijing" in x["text"] for x in rare["results"])
    para = client.get("/api/search", query_string={"q": "who headed the group of officials that travelled?",
                                                    "k": 3}).get_json()
    assert any("led an interagency delegation" in x["text"] for x in para["results"])


@pytest.mark.parametrize("method, kwargs", [
    ("get", {"query_string": {}}), ("get", {"query_string": {"q": ""}}), ("get", {"query_string": {"q": "   "}}),
    ("get", {"query_string": {"q": "x" * 1001}}), ("get", {"query_string": {"q": "china", "k": "0"}}),
    ("get", {"query_string": {"q": "china", "k": "-1"}}), ("get", {"query_string": {"q": "china", "k": "101"}}),
    ("get", {"query_string": {"q": "china", "k": "abc"}}), ("get", {"query_string": {"q": "china", "k": "1e9"}}),
    ("get", {"query_string": {"q": "china", "mode": "fuzzy"}}),
    ("get", {"query_string": {"q": "china", "published_after": "yesterday"}}),
    ("post", {"data": "{not json", "content_type": "application/json"}),
    ("post", {"json": {"q": 5}}), ("post", {"json": ["q"]}), ("post", {"json": {"q": "china", "k": "x"}}),
])
@pytest.mark.parametrize("path", ["/api/search", "/api/ask"])
def test_bad_input_is_a_json_400(fake_client, path, method, kwargs):
    r = getattr(fake_client, method)(path, **kwargs)
    assert r.status_code == 400 and r.is_json and r.get_json()["error"]


def test_oversized_body_is_413_json(fake_client):
    r = fake_client.post("/api/search", data=b"x" * (2 * 1024 * 1024), content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]


def test_healthz(fake_client):
    health = fake_client.get("/healthz").get_json()
    assert health == {**health, "status": "ok", "passages": 15}


@pytest.mark.slow
def test_ask_answers_with_verifiable_citations(client):
    body = client.get("/api/ask", query_string={"q": CHINA}).get_json()
    assert body["no_answer"] is False and body["answer"]["sentences"]
    texts = {p["passage_id"]: p["text"] for p in body["passages"]}
    for s in body["answer"]["sentences"]:
        assert texts[s["passage_id"]][s["start"]:s["end"]] == s["text"]
        assert f"[{s['citation']}]" in body["answer"]["text"]
    # China's enforcement actions, and (the next paragraph: "She also said China has started to send...") its
    # reports to the International Narcotics Control Board
    assert all(s in body["answer"]["text"] for s in ANSWERING)
    assert {c["n"] for c in body["citations"]} == {s["citation"] for s in body["answer"]["sentences"]}


@pytest.mark.slow
def test_unanswerable_question_gets_no_answer(client):
    body = client.get("/api/ask",
                      query_string={"q": "What is the boiling point of liquid nitrogen in Kelvin?"}).get_json()
    assert body["no_answer"] is True and body["answer"] is None


@pytest.mark.slow
@pytest.mark.parametrize("q", ["who led the delegation?",
                               "what does the U.S. say is the source of precursor chemicals?",
                               "when did the US and China break up a smuggling ring?", "Who is Jen Daskal?",
                               "What did Biden and Xi agree in San Francisco?", "fentanyl overdoses"])
def test_citation_spans_hold_for_many_questions(client, q):
    body = client.get("/api/ask", query_string={"q": q}).get_json()
    texts = {p["passage_id"]: p["text"] for p in body["passages"]}
    for s in (body["answer"] or {"sentences": []})["sentences"]:
        assert texts[s["passage_id"]][s["start"]:s["end"]] == s["text"]


def test_documents_api(fake_client):
    docs = fake_client.get("/api/documents").get_json()
    assert docs["total"] == 1 and docs["documents"][0]["passages"] == 15
    doc_id = docs["documents"][0]["id"]
    doc = fake_client.get(f"/api/documents/{doc_id}").get_json()
    assert len(doc["paragraphs"]) == 15 and doc["author"] == "Antoni Slodkowski"
    r = fake_client.get("/api/documents/..%2F..%2Fetc%2Fpasswd")  # a ".." segment: refused by the id rule
    assert r.status_code == 400 and r.is_json
    assert fake_client.get("/api/documents", query_string={"limit": "0"}).status_code == 400


def test_openapi_lists_every_endpoint(fake_client, fake_app):
    spec = fake_client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    routes = {str(r.rule).replace("<doc_id:doc_id>", "{doc_id}") for r in fake_app.url_map.iter_rules()
              if r.endpoint.startswith("api.")}
    assert routes <= set(spec["paths"])


def test_admin_api_is_off_without_a_token(fake_client):
    assert fake_client.post("/api/documents", json={"id": "x", "title": "t", "paragraphs": ["p"]}).status_code == 403
    assert fake_client.delete("/api/documents/x").status_code == 403
    for odd in ("0%0A", "%0D%0A", "a/b"):  # any id reaches the API (a line break once fell through to routing's 404)
        assert fake_client.delete(f"/api/documents/{odd}").status_code == 403
        r = fake_client.get(f"/api/documents/{odd}")
        assert r.status_code == 404 and r.get_json()["error"].startswith("no such document")
