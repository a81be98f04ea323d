"""The reader's pages, rendered by the app over a real index (the fake embedder): the article view, the filters on
the search page, the collection view, citations, escaping. The browser test drives the same pages in Chromium."""
from __future__ import annotations

import re
import urllib.parse

import lxml.html
import pytest

from conftest import COLLECTION_OUTLETS, collection_articles

ARTICLES = {a["id"]: a for a in collection_articles()}
HOSTILE = "odd/id?x=1#frag"


@pytest.fixture()
def web(collection_app):
    return collection_app.test_client()


def page(web, url: str, status: int = 200):
    """The parsed page at `url`, after checking its status and that it is HTML under the CSP."""
    r = web.get(url)
    assert r.status_code == status, (url, r.status_code, r.get_data(as_text=True)[:500])
    assert r.mimetype == "text/html" and "script-src 'self'" in r.headers["Content-Security-Policy"]
    return lxml.html.fromstring(r.get_data(as_text=True))


def texts(doc, xpath: str) -> list[str]:
    return [e.text_content().strip() for e in doc.xpath(xpath)]


def test_article_view_marks_the_span_and_anchors_every_paragraph(web):
    text = ARTICLES["c001"]["paragraphs"][1]
    doc = page(web, "/documents/c001?hl=9-36&p=1")
    assert texts(doc, "//h1") == [ARTICLES["c001"]["title"]]
    assert [p.get("id") for p in doc.xpath("//div[@class='body']/p")] == ["p0", "p1", "p2"]
    marks = doc.xpath("//mark")
    assert len(marks) == 1 and marks[0].get("id") == "hl" and marks[0].text_content() == text[9:36]
    assert marks[0].getparent().get("id") == "p1" and "cited" in marks[0].getparent().get("class")
    byline = texts(doc, "//article//p[@class='byline']")[0]
    assert "Associated Press" in byline and "Writer 1" in byline and "2024-06-29" in byline
    assert doc.xpath("//a[@href='https://news.example/1' and contains(., 'Original article')]")
    # a paragraph alone: anchored and shown as cited, nothing marked
    doc = page(web, "/documents/c001?p=2")
    assert not doc.xpath("//mark") and "cited" in doc.xpath("//p[@id='p2']")[0].get("class")


@pytest.mark.parametrize("query, message", [
    ("hl=36-9&p=1", "hl must be start-end"),
    ("hl=abc&p=1", "hl must be start-end"),
    ("hl=0-9999&p=1", "hl must be start-end"),
    ("hl=0-5", "hl needs p"),
    ("p=3", "p must be the index of one of this article's paragraphs"),
    ("p=-1", "p must be an integer"),
    ("p=x&hl=1-2", "p must be an integer"),
])
def test_article_view_rejects_a_bad_span_with_a_400_page(web, query, message):
    doc = page(web, "/documents/c001?" + query, 400)
    assert message in " ".join(texts(doc, "//*[@role='alert']"))


def test_unknown_article_is_a_404_page(web):
    doc = page(web, "/documents/no-such-article", 404)
    assert "no such document: no-such-article" in " ".join(texts(doc, "//*[@role='alert']"))
    assert doc.xpath("//main") and doc.xpath("//header") and doc.xpath("//footer")


def test_hostile_values_are_escaped_and_only_http_urls_become_links(web):
    r = web.get("/documents/" + urllib.parse.quote(HOSTILE, safe="/"))
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "<img src=x" not in html and "<script>alert" not in html and "<i>Mallory" not in html
    assert "javascript:" not in "".join(lxml.html.fromstring(html).xpath("//@href|//@src|//@action"))
    doc = lxml.html.fromstring(html)
    assert texts(doc, "//code[@class='url']") == ["javascript:alert(3)"]  # shown as text
    assert texts(doc, "//h1") == [ARTICLES[HOSTILE]["title"]]
    results = page(web, "/?q=harbour+bridge+tolls")
    assert "javascript:" not in "".join(results.xpath("//@href"))
    assert not results.xpath("//script[not(@src)]") and all(
        s.startswith("/static/") for s in results.xpath("//script/@src"))


@pytest.mark.parametrize("url, expected", [
    ("https://news.example/a?b=1#c", "https://news.example/a?b=1#c"), ("HTTP://news.example", "HTTP://news.example"),
    ("javascript:alert(1)", None), (" JavaScript:alert(1)", None), ("data:text/html,x", None),
    ("//news.example/a", None), ("/documents/x", None), ("http:///nohost", None), ("https://a b.example", None),
    ("vbscript:x", None), (None, None), ("", None), (5, None),
    (" https://example.com/a\tb ", "https://example.com/ab"), ("java\tscript:alert(1)", None),
    ("\x01javascript:alert(1)", None), ("https:no-host", None), ("http://[::1", None)])
def test_safe_url(url, expected):
    from qa.web.ui import safe_url

    assert safe_url(url) == expected


def test_every_answer_marker_and_result_opens_the_cited_span(web):
    doc = page(web, "/?q=harbour+bridge+tolls")
    cites = doc.xpath("//p[@id='answer-text']/a[@class='cite']")
    assert cites
    for a in cites + doc.xpath("//li[contains(@class,'cited')]//h3/a"):
        url = urllib.parse.urlsplit(a.get("href"))
        assert url.path.startswith("/documents/") and url.fragment == "hl", a.get("href")
        query = urllib.parse.parse_qs(url.query)
        target = page(web, url.path + "?" + url.query)
        (mark,) = target.xpath("//mark[@id='hl']")
        start, end = map(int, query["hl"][0].split("-"))
        assert mark.getparent().get("id") == "p" + query["p"][0] and len(mark.text_content()) == end - start
    # the marker's span is the sentence it follows
    sentence = doc.xpath("//p[@id='answer-text']")[0].text.strip()
    first = page(web, urllib.parse.urlsplit(cites[0].get("href")).path + "?"
                 + urllib.parse.urlsplit(cites[0].get("href")).query)
    assert first.xpath("//mark[@id='hl']")[0].text_content() == sentence


def test_outlet_filter_on_the_page(web):
    doc = page(web, "/?q=harbour+bridge&source=Reuters&k=20")
    outlets = texts(doc, "//li[contains(@class,'card')]//span[@class='source-name']")
    assert outlets and set(outlets) == {"Reuters"}
    assert doc.xpath("//details[@class='options' and @open]")
    assert doc.xpath("//select[@id='source']/option[@selected]/@value") == ["Reuters"]
    options = doc.xpath("//select[@id='source']/option/@value")
    assert options[0] == "" and set(options[1:]) == set(COLLECTION_OUTLETS)
    everything = page(web, "/?q=harbour+bridge&k=20")
    assert len(set(texts(everything, "//li[contains(@class,'card')]//span[@class='source-name']"))) > 1
    assert not everything.xpath("//details[@class='options' and @open]")


def test_date_and_mode_filters_on_the_page(web):
    doc = page(web, "/?q=rail+strike&published_after=2024-06-01&published_before=2024-06-20&mode=lexical&k=20")
    dates = texts(doc, "//li[contains(@class,'card')]//time")
    assert dates and all("2024-06-01" <= d <= "2024-06-20" for d in dates), dates
    assert doc.xpath("//input[@id='published_after']/@value") == ["2024-06-01"]
    assert doc.xpath("//select[@id='mode']/option[@selected]/@value") == ["lexical"]


@pytest.mark.parametrize("query", ["published_after=2024-13-01", "published_before=yesterday", "mode=fuzzy",
                                   "k=0", "source=" + "x" * 600])
def test_invalid_filters_show_the_api_error_with_a_400(web, query):
    api = web.get("/api/ask?q=rail+strike&" + query)
    assert api.status_code == 400
    doc = page(web, "/?q=rail+strike&" + query, 400)
    assert texts(doc, "//*[@role='alert']") == [api.get_json()["error"]]
    assert doc.xpath("//input[@id='q']/@value") == ["rail strike"]


def test_collection_newest_first_paginated_with_counts_by_outlet(web):
    dated = sorted((a for a in ARTICLES.values() if a.get("published")), key=lambda a: (a["published"], a["id"]))
    undated = sorted(a["id"] for a in ARTICLES.values() if not a.get("published"))
    expected = [a["id"] for a in sorted(dated, key=lambda a: a["published"], reverse=True)] + undated
    seen, url = [], "/documents"
    for n in (1, 2, 3):
        doc = page(web, url)
        links = doc.xpath("//section[@class='doclist']//a[@class='doc-title']/@href")
        assert len(links) == (50 if n < 3 else len(ARTICLES) - 100)
        seen += [urllib.parse.unquote(h.removeprefix("/documents/")) for h in links]
        assert f"Page {n} of 3" in " ".join(texts(doc, "//nav[@class='pager']"))
        nxt = doc.xpath("//nav[@class='pager']//a[@rel='next']/@href")
        url = nxt[0] if nxt else None
    assert url is None and seen == expected
    counts = dict(re.findall(r"(.+?)\s+(\d+)$", line)[0] for line in texts(page(web, "/documents"),
                                                                            "//section[@class='outlets']//li"))
    for outlet in COLLECTION_OUTLETS:
        assert int(counts[outlet]) == sum(1 for a in ARTICLES.values() if a.get("source") == outlet)
    assert int(counts["no outlet"]) == sum(1 for a in ARTICLES.values() if not a.get("source"))
    first = page(web, "/documents").xpath("//section[@class='doclist']//li")[0]
    assert "Reuters" in first.text_content() and "2024-06-30" in first.text_content() \
        and "3 paragraphs" in first.text_content()


def test_collection_of_one_outlet_and_bad_pages(web):
    doc = page(web, "/documents?source=bbc+news")
    rows = texts(doc, "//section[@class='doclist']//li//span[@class='source-name']")
    assert rows and set(rows) == {"BBC News"}
    assert len(rows) == sum(1 for a in ARTICLES.values() if a.get("source") == "BBC News")
    assert "no page 4" in " ".join(texts(page(web, "/documents?page=4", 404), "//*[@role='alert']"))
    assert "page must be an integer" in " ".join(texts(page(web, "/documents?page=0", 400), "//*[@role='alert']"))


def test_citation_text_on_each_result(web):
    doc = page(web, "/?q=flood+defences+cost&k=10")
    cards = doc.xpath("//li[contains(@class,'card')]")
    assert cards
    for card in cards:
        title = card.xpath(".//h3")[0].text_content().strip()
        (area,) = card.xpath(".//details[@class='citation']//textarea[@readonly]")
        label = card.xpath(f".//label[@for='{area.get('id')}']")
        button = card.xpath(f".//button[@class='copy' and @data-copy='{area.get('id')}']")
        assert label and button
        text = area.text_content()
        number = re.search(r"paragraph (\d+)", card.xpath(".//p[@class='byline']")[0].text_content())[1]
        assert f'"{title}"' in text and text.endswith(f"paragraph {number}.")
        article = ARTICLES[next(i for i, a in ARTICLES.items() if a["title"] == title)]
        assert text.startswith(article["author"] + ", ") and article["url"] in text
        assert article.get("source", "") in text and article.get("published", "") in text


def test_citation_of_an_article_without_a_web_url_is_its_article_view(web):
    doc = page(web, "/?q=harbour+bridge+tolls+July")
    areas = [a.text_content() for a in doc.xpath("//textarea")
             if ARTICLES[HOSTILE]["author"] in a.text_content()]
    assert areas and all("http://localhost/documents/odd/id%3Fx=1%23frag?p=" in a for a in areas)
    assert all("javascript:" not in a for a in areas)


def test_the_pages_are_in_the_openapi_document(web):
    paths = web.get("/openapi.json").get_json()["paths"]
    for path in ("/", "/documents", "/documents/{doc_id}"):
        assert "text/html" in paths[path]["get"]["responses"]["200"]["content"], path
    assert {p["name"] for p in paths["/documents/{doc_id}"]["get"]["parameters"]} == {"doc_id", "p", "hl"}
