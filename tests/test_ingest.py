import json

import pytest

from qa.errors import IngestError
from qa.ingest import article_from_dict, is_boilerplate, parse_html, parse_text, read_sources

from conftest import SEED_FILE


def test_seed_is_its_15_article_paragraphs():
    text = open(SEED_FILE, encoding="utf-8").read()
    a = parse_text(text, "seed")
    assert a.title.startswith("US says fentanyl talks with China")
    assert len(a.paragraphs) == 15
    assert [p.index for p in a.paragraphs] == list(range(15))
    assert a.author == "Antoni Slodkowski" and a.source == "Reuters"
    assert a.tags == ["Drug Trafficking Opioid Crisis"]
    joined = " ".join(p.text for p in a.paragraphs)
    for chrome in ("Article Link", "Federal Tax ID", "Copyright", "Log in with", "Forgot your details", "Create Account"):
        assert chrome not in joined


@pytest.mark.parametrize("line", [
    "Copyright © 2024 Example Media. All rights reserved.", "Privacy Policy | Terms of Use", "Sign in to continue",
    "Forgot your password?", "Subscribe to our newsletter", "Read more", "https://example.com/a/b",
    "Share this", "Company No. 1234567 registered in England", "Related Articles", "Create an account",
])
def test_chrome_lines_are_boilerplate(line):
    assert is_boilerplate(line)


@pytest.mark.parametrize("para", [
    "The court said the copyright claim against the newspaper failed because the photographs were in the public "
    "domain, a ruling that lawyers said would shape how outlets license archive images for years to come.",
    "Prices rose 3%.", "“No,” she said.",
])
def test_article_sentences_are_kept(para):
    assert not is_boilerplate(para)


def test_jsonl_paragraph_index_is_the_list_index():
    a = article_from_dict({"id": "x", "title": "T", "paragraphs": ["First real paragraph here.", "", "Log in",
                                                                    "Fourth paragraph stays."]})
    assert [(p.index, p.text) for p in a.paragraphs] == [(0, "First real paragraph here."),
                                                         (3, "Fourth paragraph stays.")]


def test_jsonl_text_field_and_metadata():
    a = article_from_dict({"id": "y", "title": "T", "text": "One para.\n\nTwo para.", "published": "2024-01-10T10:00Z",
                           "source": "Wire", "tags": ["a", "b"]})
    assert [p.text for p in a.paragraphs] == ["One para.", "Two para."]
    assert a.published == "2024-01-10" and a.source == "Wire" and a.tags == ["a", "b"]


@pytest.mark.parametrize("obj, message", [
    ({"title": "T", "paragraphs": []}, '"id"'), ({"id": "x", "paragraphs": []}, '"title"'),
    ({"id": "x", "title": "T"}, "paragraphs"), ({"id": "x", "title": "T", "paragraphs": [1]}, "list of strings"),
    ({"id": "x", "title": "T", "text": "a", "published": "soon"}, "published"), ([1, 2], "object"),
])
def test_bad_articles_are_rejected(obj, message):
    with pytest.raises(IngestError, match=message):
        article_from_dict(obj)


def test_bad_jsonl_lines_are_reported_and_the_rest_indexed(tmp_path):
    path = tmp_path / "a.jsonl"
    good = {"id": "g", "title": "Good", "paragraphs": ["A fine paragraph of news text."]}
    path.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"id": "n"}) + "\n" + json.dumps({**good, "id": "h"}) + "\n")
    problems = []
    arts = list(read_sources([str(path)], on_problem=problems.append))
    assert [a.id for a in arts] == ["g", "h"]
    assert [p.line for p in problems] == [2, 3]
    with pytest.raises(IngestError, match=":2"):
        list(read_sources([str(path)], strict=True))


def test_folders_walk_recursively_with_stable_ids(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "story.md").write_text("---\ntitle: Front matter title\nauthor: Jane Roe\ndate: 2024-02-01\n---\n"
                                               "# Heading\n\nThe **council** met on [Tuesday](http://x) to vote.\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / "latin.txt").write_bytes("Title\n\nCaf\xe9 owners protested the new tax on Monday.\n".encode("latin-1"))
    problems = []
    arts = {a.id: a for a in read_sources([str(tmp_path)], on_problem=problems.append)}
    assert set(arts) == {"sub/story", "latin"}
    md = arts["sub/story"]
    assert md.title == "Front matter title" and md.author == "Jane Roe" and md.published == "2024-02-01"
    assert md.paragraphs[0].text == "The council met on Tuesday to vote."
    assert "\ufffd" in arts["latin"].paragraphs[0].text
    messages = " ".join(str(p) for p in problems)
    assert "binary" in messages and "empty" in messages and "UTF-8" in messages


def test_html_through_trafilatura():
    html = """<!doctype html><html><head><title>Port strike ends | The Harbour Times</title>
    <meta name="author" content="Ana Lima"><link rel="canonical" href="https://example.com/port-strike">
    <meta property="article:published_time" content="2024-03-05"></head><body>
    <nav><a href="/">Home</a> <a href="/login">Log in</a></nav>
    <article><h1>Port strike ends after nine days</h1>
    <p>Dock workers at the northern port voted on Monday to end a nine-day strike over pay and shift patterns.</p>
    <p>The union said the deal raised wages by six percent over two years and limited night shifts.</p></article>
    <footer>Copyright © 2024 The Harbour Times. All rights reserved.</footer></body></html>"""
    a = parse_html(html, "port")
    texts = [p.text for p in a.paragraphs]
    assert any("nine-day strike" in t for t in texts)
    assert not any("Copyright" in t or "Log in" in t for t in texts)
    assert a.author == "Ana Lima" and a.url == "https://example.com/port-strike" and a.published == "2024-03-05"
