import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence

import pytest

import qa.ingest
from qa.chunk import chunk_article
from qa.errors import IngestError
from qa.ingest import article_from_dict, is_boilerplate, parse_html, parse_text, read_sources, squash_spaces

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
    for chrome in ("Article Link", "Federal Tax ID", "Copyright", "Log in with", "Forgot your details",
                   "Create Account"):
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
    path.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"id": "n"}) + "\n"
                    + json.dumps({**good, "id": "h"}) + "\n")
    problems = []
    arts = list(read_sources([str(path)], on_problem=problems.append))
    assert [a.id for a in arts] == ["g", "h"]
    assert [p.line for p in problems] == [2, 3]
    with pytest.raises(IngestError, match=":2"):
        list(read_sources([str(path)], strict=True))


def test_folders_walk_recursively_with_stable_ids(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "story.md").write_text(
        "---\ntitle: Front matter title\nauthor: Jane Roe\ndate: 2024-02-01\n---\n"
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


@pytest.mark.parametrize("text", ["", "  ", "one", " a  b\tc\n\nd ", "a\u2028b\xa0c", "x \x01 y", "é  é"])
def test_squash_spaces_is_split_and_join(text):
    assert squash_spaces(text) == " ".join(text.split())


def test_squash_spaces_in_pieces_is_split_and_join(monkeypatch):
    monkeypatch.setattr(qa.ingest, "_SQUASH_PIECE", 3)  # piece edges fall inside words and space runs
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(["ab", "c", " ", "  ", "\n", "\t", "é"]) for _ in range(rng.randint(0, 30)))
        assert squash_spaces(text) == " ".join(text.split()), repr(text)


@pytest.mark.parametrize("markers", ["rate *{} rose", "rate __{} rose", "x `{} y", "see [note {} here",
                                     "see ![a](b {} here", "see [a](b {} here"])
def test_markdown_cleanup_of_unclosed_markers_is_linear(markers):
    # each unclosed marker used to rescan the rest of the paragraph
    para = " ".join(markers.format(i) for i in range(10_000))  # ~150 KB: 30 s before, 0.05 s now
    t0 = time.perf_counter()
    a = parse_text("Title\n\n" + para, "md", markdown=True)
    assert time.perf_counter() - t0 < 2
    assert len(a.paragraphs) == 1


def test_markdown_links_keep_their_text():
    a = parse_text("Title\n\nSee [Foo](https://en.wikipedia.org/wiki/Foo_(bar)) and **bold *it* text**.", "md",
                   markdown=True)
    assert a.paragraphs[0].text == "See Foo and bold *it* text."


# --- a 50 MB file --------------------------------------------------------------------------------------------
# Varied news sentences (abbreviations, quotes, accents, numbers) cycled to 50 MB of UTF-8. Time is checked per
# step with a wide margin for a loaded machine: the quadratic paths this guards against take minutes to hours.
# Peak memory comes from the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs), which costs
# nothing, where tracemalloc would triple the run time; elsewhere than Linux it is not checked.

BIG = 50_000_000  # bytes
STEP_SECONDS = 60
SUBJECTS = ["The council", "Mr. Okafor", "U.S. officials", "The São Paulo exchange", "Dr. Müller’s team",
            "A spokeswoman for the ministry", "Shareholders", "Fishermen in Tromsø", "The 3.5% bond", "Prof. Nakamura",
            "Residents of the old town", "The union", "Ms. García", "Investors in Zürich", "The committee"]
VERBS = ["said on Jan. 5 that it would review", "voted 7-2 to delay", "rejected", "welcomed", "warned about",
         "asked the court to block", "spent $2.4 billion on", "called for an inquiry into", "praised",
         "will publish a report on", "doubled its spending on", "has questioned"]
OBJECTS = ["the budget for schools and roads", "a plan to rebuild the harbour", "“a fair deal for everyone”",
           "new rules on fishing quotas", "the merger of two regional banks", "rising prices for bread and milk",
           "the 12-km rail link", "a ban on night flights", "the mayor’s housing plan", "talks with the EU"]
ENDINGS = [".", " on Monday.", ", officials said.", " — and more talks are planned.", " after months of debate.",
           ", according to a statement.", "!", " in 2023.", ", the report (p. 14) said.", "?"]


@pytest.fixture(scope="module")
def big_paragraphs() -> list[list[str]]:
    """Paragraphs, as lists of sentences, of a little over 50 MB of text."""
    rng = random.Random(0)
    sentences = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
                 for _ in range(4000)]
    pool = []
    for _ in range(2000):
        start = rng.randrange(len(sentences) - 8)
        pool.append(sentences[start:start + rng.randint(3, 8)])
    paragraphs, size = [], 0
    while size < BIG:
        paragraphs.append(pool[len(paragraphs) % len(pool)])
        size += sum(len(s.encode()) + 1 for s in paragraphs[-1]) + 1
    return paragraphs


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def measured(fn: Callable[[], object]) -> tuple[object, float, int | None]:
    """`fn()`, the seconds it took, and the growth of the process's peak resident memory (None if unknown)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current resident size
        start = _rss("VmRSS")
    except OSError:
        start = None
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    return result, seconds, None if start is None else _rss("VmHWM") - start


def first_difference(a: Sequence, b: Sequence) -> int | None:
    """Where two long sequences first differ, None if equal (pytest's own diff of 50 MB would not end)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def count_words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


@pytest.mark.slow  # 50 MB of text
def test_a_50_mb_text_file_is_read_whole(tmp_path, big_paragraphs):
    # hard-wrapped (a sentence a line), with share buttons between paragraphs and a copyright footer
    blocks = ["Harbour council budget, day by day", "By Jane Roe, Example News", "Published: 2024-03-01"]
    for k, sentences in enumerate(big_paragraphs):
        blocks.append("\n".join(sentences))
        if k % 40 == 7:
            blocks.append("Share this")
    blocks.append("Copyright © 2024 Example News. All rights reserved.")
    path = tmp_path / "long.txt"
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    del blocks
    size = os.path.getsize(path)
    assert size >= BIG
    problems = []
    articles, seconds, peak = measured(lambda: list(read_sources([str(path)], on_problem=problems.append)))
    assert problems == [] and len(articles) == 1
    a = articles[0]
    assert a.title == "Harbour council budget, day by day" and a.author == "Jane Roe" and a.published == "2024-03-01"
    expected = [" ".join(sentences) for sentences in big_paragraphs]
    assert first_difference([p.text for p in a.paragraphs], expected) is None  # all kept, chrome only dropped
    assert [p.index for p in a.paragraphs] == list(range(len(expected)))
    assert seconds < STEP_SECONDS
    assert peak is None or peak < 10 * size, f"{peak / size:.1f} times the file"  # a few copies of the text (~4x)


@pytest.mark.slow  # 50 MB of text
def test_a_50_mb_jsonl_file_is_streamed(tmp_path, big_paragraphs):
    path, size, articles, chars, bad_line = tmp_path / "many.jsonl", 0, 0, 0, None
    with open(path, "w", encoding="utf-8") as f:
        while size < BIG:
            if articles == 5000 and bad_line is None:
                bad_line = articles + 1
                f.write('{"id": "broken", "title": "Cut off", "paragraphs": ["The council said\n')
                continue
            paragraphs = [" ".join(s) for s in big_paragraphs[articles * 6 % len(big_paragraphs):][:6]]
            line = json.dumps({"id": f"story-{articles}", "title": f"Story {articles}", "paragraphs": paragraphs},
                              ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode())
            articles += 1
            chars += sum(map(len, paragraphs))
    problems = []

    def consume():  # counted as they come, never kept: a stream holds one article at a time
        seen = seen_chars = 0
        for a in read_sources([str(path)], on_problem=problems.append):
            seen += 1
            seen_chars += sum(len(p.text) for p in a.paragraphs)
        return seen, seen_chars

    (seen, seen_chars), seconds, peak = measured(consume)
    assert (seen, seen_chars) == (articles, chars)
    assert [p.line for p in problems] == [bad_line]
    assert seconds < STEP_SECONDS
    # reading whole would hold the file and its parse (several times its size); a stream holds one article
    # plus allocator slack, which varies by a few MB from run to run
    assert peak is None or peak < size / 4, f"{peak / 1e6:.0f} MB resident for a {size / 1e6:.0f} MB file"


@pytest.mark.slow  # 50 MB of text
def test_a_50_mb_paragraph_is_kept_and_windowed_whole(tmp_path, big_paragraphs):
    sentences = [s for paragraph in big_paragraphs for s in paragraph]
    # one paragraph, its sentences apart by line breaks, tabs and double spaces: white space is squashed
    raw = "".join(s + (" ", "\n", "  ", " \t")[i % 4] for i, s in enumerate(sentences))
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps({"id": "huge", "title": "Huge", "paragraphs": [raw]}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    del raw
    size = os.path.getsize(path)
    assert size >= BIG
    articles, seconds, peak = measured(lambda: list(read_sources([str(path)])))
    assert seconds < STEP_SECONDS
    # the line, its decoded and parsed copies and the squashed text (~6x); listing its words took 18x
    assert peak is None or peak < 10 * size, f"{peak / size:.1f} times the file"
    [article] = articles
    expected = " ".join(sentences)
    assert len(article.paragraphs) == 1 and first_difference(article.paragraphs[0].text, expected) is None

    passages, seconds, _ = measured(lambda: chunk_article(article, count_words, max_tokens=254))
    assert seconds < STEP_SECONDS
    [p] = passages
    assert (p.char_start, p.char_end) == (0, len(expected)) and p.text is article.paragraphs[0].text
    # the sentences hold every character but the spaces between them
    spans = p.sentences
    assert spans[0][0] == 0 and spans[-1][1] == len(p.text)
    assert all(e <= s and not p.text[e:s].strip() for (_, e), (s, _) in zip(spans, spans[1:]))
    # the windows run from the first sentence to the last, whole sentences, no gaps, within the token budget
    first = {s: i for i, (s, _) in enumerate(spans)}
    last = {e: i for i, (_, e) in enumerate(spans)}
    prefix = [0]
    for n in count_words([p.text[s:e] for s, e in spans]):
        prefix.append(prefix[-1] + n)
    bounds = [(first[s], last[e]) for s, e in p.windows]
    assert bounds[0][0] == 0 and bounds[-1][1] == len(spans) - 1
    assert all(i < j <= k + 1 for (i, k), (j, _) in zip(bounds, bounds[1:]))
    assert all(prefix[k + 1] - prefix[i] <= 254 or i == k for i, k in bounds)
    assert len(p.windows) > len(spans) // 20  # windows of ~250 words, not one window for the lot


# --- one date rule, one id rule, one text rule ---------------------------------------------------------------

@pytest.mark.parametrize("value,iso", [
    ("2024-02-29", "2024-02-29"), ("2024-03-01T10:00:00Z", "2024-03-01"), ("March 3, 2024", "2024-03-03"),
    ("2024-02-30", None), ("2024-13-45", None), ("2023-02-29", None), ("0000-01-01", None), ("Feb 30, 2024", None),
    ("31 April 2024", None), ("soon", None)])
def test_dates_are_calendar_days_on_every_path(value, iso):
    from qa.errors import BadRequest
    from qa.params import validate_date

    assert qa.ingest.normalize_date(value) == iso
    if iso is None:
        with pytest.raises(IngestError, match="published"):
            article_from_dict({"id": "d", "title": "T", "text": "A paragraph of news.", "published": value})
        with pytest.raises(BadRequest, match="published_after"):
            validate_date(value, "published_after")
        assert parse_text(f"Title\n\nPublished: {value}\n\nA paragraph of news here.", "d").published is None
    else:
        assert validate_date(value, "published_after") == iso


@pytest.mark.parametrize("doc_id,ok", [
    ("a/b/c", True), ("victim/", True), ("sp ace?#%", True), ("...", True), ("a\nb", True),
    ("/victim", False), ("a//b", False), ("./a", False), ("a/../b", False), ("..", False), (".", False),
    ("a\x00b", False), ("a\ud800", False), ("", False), ("x" * 513, False)])
def test_one_id_rule_for_every_path(doc_id, ok):
    if ok:
        assert qa.ingest.validate_doc_id(doc_id) == doc_id
        return
    with pytest.raises(IngestError, match="invalid document id"):
        qa.ingest.validate_doc_id(doc_id)
    with pytest.raises(IngestError):
        article_from_dict({"id": doc_id, "title": "T", "text": "A paragraph of news."})


def test_invalid_text_in_a_jsonl_file_is_a_problem_naming_the_field(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "a", "title": "T", "paragraphs": ["fine text here.", "bad \\ud800"]}\n'
                    '{"id": "b", "title": "T\\u0000", "paragraphs": ["fine text here."]}\n'
                    '{"id": "c", "title": "T", "paragraphs": ["fine text here."]}\n', encoding="utf-8")
    problems = []
    assert [a.id for a in read_sources([str(path)], on_problem=problems.append)] == ["c"]
    assert ['"paragraphs[1]" holds invalid Unicode' in str(problems[0]), '"title" holds a NUL' in str(problems[1])] \
        == [True, True]


def test_strict_build_names_the_html_file_without_text(tmp_path):
    from click.testing import CliRunner
    from qa.cli import main

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "empty-page.html").write_text("<html><head><title>x</title></head><body></body></html>")
    res = CliRunner().invoke(main, ["build", str(tmp_path / "src"), "--strict", "--model", "hash", "--quiet",
                                    "--index-dir", str(tmp_path / "index")])
    assert res.exit_code == 2 and "empty-page.html" in res.output and "Traceback" not in res.output, res.output
