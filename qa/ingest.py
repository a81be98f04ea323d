"""Readers for plain text, Markdown, HTML and JSON Lines articles; the boilerplate filter; `Article`."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator

from .errors import IngestError
from .text import WORD

log = logging.getLogger(__name__)

TEXT_EXTS = {".txt", ".text", ""}
MARKDOWN_EXTS = {".md", ".markdown", ".mdown"}
HTML_EXTS = {".html", ".htm", ".xhtml"}
JSONL_EXTS = {".jsonl", ".ndjson"}
KNOWN_EXTS = TEXT_EXTS | MARKDOWN_EXTS | HTML_EXTS | JSONL_EXTS
PARAGRAPH_SEP = "\n\n"
MAX_DOC_ID_CHARS = 512
# NUL and the other control characters are refused; line breaks pass, so the API answers a looked-up id holding one
# with "no such document" (tests/test_api.py) rather than a 400
_DOC_ID_CONTROL = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# NUL cannot be stored as text and a lone surrogate (JSON "\ud800", an argv byte that is not UTF-8) cannot even be
# encoded: both are refused in every string a request or an article brings
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
MAX_FIELD_NAME = 60


@dataclasses.dataclass
class Paragraph:
    """One paragraph of an article; `index` is its position in the source (JSONL list index, or ordinal)."""

    index: int
    text: str


@dataclasses.dataclass
class Article:
    """A cleaned article: metadata and its paragraphs, site chrome removed."""

    id: str
    title: str
    paragraphs: list[Paragraph]
    source: str | None = None
    author: str | None = None
    url: str | None = None
    published: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    path: str | None = None

    @property
    def text(self) -> str:
        """The document's text: its kept paragraphs joined by blank lines (char offsets point into this)."""
        return PARAGRAPH_SEP.join(p.text for p in self.paragraphs)

    def content_hash(self) -> str:
        """A hash of everything indexed about the article, to skip unchanged re-adds."""
        payload = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        """The article in the JSONL schema (paragraph indexes kept in `paragraph_indexes`)."""
        return {
            "id": self.id, "title": self.title, "paragraphs": [p.text for p in self.paragraphs],
            "paragraph_indexes": [p.index for p in self.paragraphs], "source": self.source,
            "author": self.author, "url": self.url, "published": self.published, "tags": self.tags,
        }


@dataclasses.dataclass
class Problem:
    """A file or JSONL line that was skipped or read with a warning."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


ProblemSink = Callable[[Problem], None]

# --- boilerplate ---------------------------------------------------------------------------------------------

_OVER_30_WORDS = re.compile(r"(?:\W*+\w++){31}")  # possessive: linear, a word is never split in two
_URL_ONLY = re.compile(r"^\s*(<)?(https?://|www\.)\S+(>)?\s*$", re.I)
_LEGAL = re.compile(
    r"©|\(c\)\s*\d{4}|\bcopyright\s*(\d{4}|\(c\))|\ball rights reserved\b|\b(privacy|cookie|refund|trademark"
    r"|copyright) (policy|notice|settings)\b|\bterms (of|and) (use|service|conditions)\b", re.I)
_FOOTER_ID = re.compile(
    r"\b(tax id|tax identification|duns|vat (no|number|reg)|ein|company (no|number|registration)"
    r"|registered (office|charity|in england)|abn|isbn)\b[\s.:#-]*[\w-]*\d", re.I)
_ACCOUNT = re.compile(
    r"\b(log ?in|log ?out|sign ?in|sign ?up|sign ?out|create (an |your )?account|forgot (your )?"
    r"(password|details|username|login)|reset (your )?password|remember me|subscribe|subscription|"
    r"newsletter|register( now| here| for free)?|already a member|your credentials)\b", re.I)
_SHARE = re.compile(r"^(share|share this|tweet|email|print|read more|continue reading|advertisement|related"
                    r"( articles| stories)?|comments?|next article|previous article|back to top|article link)"
                    r"\W*$", re.I)
_SENTENCE_END = re.compile(r"[.!?…:;\"'”’)\]]\s*$")


def word_count(text: str) -> int:
    """Number of word tokens in `text`."""
    return len(WORD.findall(text))


def is_boilerplate(text: str) -> bool:
    """Whether a paragraph is site chrome: legal lines, account prompts, link-only or label-like short lines."""
    text = text.strip()
    if not text or not WORD.search(text):
        return True
    # the checks below only ask "at most 30 words?": a long paragraph's words are not listed
    words = 31 if _OVER_30_WORDS.match(text) else word_count(text)
    if _URL_ONLY.match(text) or _SHARE.match(text):
        return True
    # short lines only: a real paragraph may well discuss copyright or subscriptions
    if words <= 30 and (_LEGAL.search(text) or _FOOTER_ID.search(text)):
        return True
    if words <= 15 and _ACCOUNT.search(text):
        return True
    # labels, buttons and menu entries: a few words and no sentence punctuation
    if words <= 4 and not _SENTENCE_END.search(text):
        return True
    return False


# --- plain text and Markdown ---------------------------------------------------------------------------------

_BLOCK_SPLIT = re.compile(r"\n[ \t]*\n")
_BYLINE = re.compile(r"^(?:by|written by|reporting by|story by)\s+(?P<who>[^\n]{2,120})$", re.I)
_TAGS = re.compile(r"^(?:tags?|topics?|categories|category|filed under|keywords)\s*:\s*(?P<tags>.*)$", re.I)
_META = re.compile(r"^(?P<key>published|date|updated|url|link|source|author|outlet)\s*:\s*(?P<value>\S.*)$", re.I)
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
# Each scan stops at the next bracket, parenthesis or same delimiter, so a huge paragraph with unclosed markers
# costs linear time (a bare `.+?` to the closing delimiter rescanned the rest of the paragraph per marker).
# Link targets may hold one level of parentheses (Wikipedia URLs).
_MD_TARGET = r"\([^()]*(?:\([^()]*\)[^()]*)*\)"
_MD_IMAGE = re.compile(r"!\[[^\[\]]*\]" + _MD_TARGET)
_MD_LINK = re.compile(r"\[([^\[\]]+)\]" + _MD_TARGET)
_MD_EMPH = re.compile(r"(\*\*|__|\*|_|`)(?=\S)((?:(?!\1).)+?)(?<=\S)\1")
_ISO_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})(?:[T ][\d:.+Z-]+)?\b")
_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
_TEXT_DATE = re.compile(r"\b(\d{1,2})?\s*(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+"
                        r"(\d{1,2})?,?\s*(\d{4})\b", re.I)


def calendar_date(year: int, month: int, day: int) -> str | None:
    """The ISO date (YYYY-MM-DD) of a real calendar day, else None (2024-02-30 and 2024-13-45 are no days)."""
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return None


def normalize_date(value: str | None) -> str | None:
    """The one date rule: an ISO date (YYYY-MM-DD) from common date spellings of a real calendar day, else None."""
    if not value:
        return None
    m = _ISO_DATE.search(value)
    if m:
        year, month, day = (int(x) for x in m.group(1).split("-"))
        return calendar_date(year, month, day)
    m = _TEXT_DATE.search(value)
    if m:
        return calendar_date(int(m.group(4)), _MONTHS[m.group(2).lower()[:3]], int(m.group(1) or m.group(3) or 1))
    return None


def _split_tags(raw: str) -> list[str]:
    parts = re.split(r"\s*[,;|#]\s*", raw.strip())
    return [p.strip() for p in parts if p.strip()]


def _front_matter(text: str) -> tuple[dict, str]:
    """Simple `key: value` front matter between `---` lines (Markdown convention)."""
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not m:
        return {}, text
    meta = {}
    for line in m.group(1).splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            meta[key.strip().lower()] = value.strip().strip("'\"")
    return meta, text[m.end():]


def _clean_markdown(block: str) -> str:
    block = _MD_IMAGE.sub("", block)
    block = _MD_LINK.sub(r"\1", block)
    block = _MD_EMPH.sub(r"\2", block)
    return block


def parse_text(text: str, doc_id: str, *, markdown: bool = False, path: str | None = None) -> Article:
    """Parse a plain-text or Markdown article: title line, byline, tags and metadata lines, paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    meta, text = _front_matter(text) if markdown else ({}, text)
    title = meta.get("title")
    author, source = meta.get("author"), meta.get("source") or meta.get("outlet")
    url, published = meta.get("url") or meta.get("link"), normalize_date(meta.get("date") or meta.get("published"))
    tags = _split_tags(meta.get("tags", "").strip("[]")) if meta.get("tags") else []
    paragraphs: list[Paragraph] = []
    for block in _BLOCK_SPLIT.split(text):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if not lines:
            continue
        if title is None:
            title = _MD_HEADING.sub("", lines[0]).strip()
            lines = lines[1:]
            if not lines:
                continue
        if markdown and _MD_HEADING.match(lines[0]) and len(lines) == 1:
            continue  # a section heading is not a passage
        para = " ".join(lines)
        if markdown:
            para = _clean_markdown(para)
        if len(lines) == 1 and len(para) <= 160:
            if m := _BYLINE.match(para):
                who = [w.strip() for w in m.group("who").split(",") if w.strip()]
                author = author or who[0]
                source = source or (who[-1] if len(who) > 1 else None)
                continue
            if m := _TAGS.match(para):
                tags = tags or _split_tags(m.group("tags"))
                continue
            if m := _META.match(para):
                key, value = m.group("key").lower(), m.group("value").strip()
                if key in ("published", "date", "updated"):
                    published = published or normalize_date(value)
                elif key in ("url", "link"):
                    url = url or value
                elif key == "author":
                    author = author or value
                else:
                    source = source or value
                continue
        if is_boilerplate(para):
            continue
        paragraphs.append(Paragraph(len(paragraphs), para))
    return Article(id=doc_id, title=title or doc_id, paragraphs=paragraphs, source=source, author=author,
                   url=url, published=published, tags=tags, path=path)


# --- HTML ----------------------------------------------------------------------------------------------------

def parse_html(html: str, doc_id: str, *, path: str | None = None, url: str | None = None,
               guess_date: bool = True) -> Article:
    """Main text and metadata of an HTML page, through trafilatura (`url`: where the page came from, for its host and
    its canonical URL; `guess_date` False: a date only from the page's markup and URL, never guessed from its text,
    where a copyright year passes for one)."""
    import trafilatura
    from trafilatura.settings import set_date_params

    doc = trafilatura.bare_extraction(html, url=url, with_metadata=True, include_comments=False,
                                      include_tables=False, favor_precision=True,
                                      date_extraction_params=None if guess_date else set_date_params(False))
    if doc is None:
        raise IngestError("no article text found in the HTML page")
    get = (lambda key: doc.get(key)) if isinstance(doc, dict) else (lambda key: getattr(doc, key, None))
    body = get("text") or ""
    paragraphs = []
    for block in body.split("\n"):
        block = re.sub(r"^[-*•]\s+", "", block.strip())
        if block and not is_boilerplate(block):
            paragraphs.append(Paragraph(len(paragraphs), block))
    tags = get("tags") or get("categories") or []
    if isinstance(tags, str):
        tags = _split_tags(tags)
    return Article(id=doc_id, title=(get("title") or doc_id).strip(), paragraphs=paragraphs,
                   source=get("sitename") or get("hostname"), author=get("author"), url=get("url"),
                   published=normalize_date(get("date")), tags=list(tags), path=path)


# --- JSON Lines ----------------------------------------------------------------------------------------------

_SQUASH_PIECE = 1 << 20


def squash_spaces(text: str) -> str:
    """`text` trimmed, with each run of white space as one space (as `" ".join(text.split())`).

    A clean text is returned as is, and a huge one is squashed a piece at a time: splitting a 50 MB paragraph
    into words at once would hold ten times its size in word objects.
    """
    if "  " not in text and text.isprintable():  # white space, if any, is single spaces only
        return text.strip()
    if len(text) <= _SQUASH_PIECE:
        return " ".join(text.split())
    out: list[str] = []
    space = False  # white space seen since the last word written
    for i in range(0, len(text), _SQUASH_PIECE):
        piece = text[i:i + _SQUASH_PIECE]
        words = " ".join(piece.split())
        if not words:
            space = True
            continue
        if out and (space or piece[0].isspace()):
            out.append(" ")
        out.append(words)
        space = piece[-1].isspace()
    return "".join(out)


def check_text(value: object, name: str = "") -> None:
    """`IngestError` naming the first string of a JSON value (keys included) that holds a NUL or a lone surrogate.

    The one check for text coming in: the API's JSON bodies, query parameters and articles read from files.
    """
    stack = [(name, value)]  # iterative: a deeply nested body must not exhaust the recursion limit
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key, v in item.items():
                check_text(key, f"a field name in {where}" if where else "a field name")
                stack.append((f"{where}.{key}" if where else key, v))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
        elif isinstance(item, str) and (m := _BAD_TEXT.search(item)):
            what = "a NUL character" if m.group() == "\x00" else "invalid Unicode (a lone surrogate)"
            where = where if len(where) <= MAX_FIELD_NAME else where[:MAX_FIELD_NAME] + "..."
            raise IngestError(f'"{where}" holds {what}' if where else f"the text holds {what}")


def _opt_str(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise IngestError(f'"{key}" must be a string')
    return value.strip() or None


def article_from_dict(obj: object, *, path: str | None = None) -> Article:
    """Validate one article in the JSONL schema and clean its paragraphs."""
    if not isinstance(obj, dict):
        raise IngestError("an article must be a JSON object")
    check_text(obj)
    doc_id = obj.get("id")
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise IngestError('"id" must be a non-empty string')
    validate_doc_id(doc_id)
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        raise IngestError('"title" must be a non-empty string')
    if "paragraphs" in obj:
        raw = obj["paragraphs"]
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise IngestError('"paragraphs" must be a list of strings')
        paragraphs = [Paragraph(i, squash_spaces(p)) for i, p in enumerate(raw)]
    elif "text" in obj:
        if not isinstance(obj["text"], str):
            raise IngestError('"text" must be a string')
        blocks = [squash_spaces(b) for b in _BLOCK_SPLIT.split(obj["text"].replace("\r\n", "\n"))]
        paragraphs = [Paragraph(i, b) for i, b in enumerate(b for b in blocks if b)]
    else:
        raise IngestError('an article needs "paragraphs" or "text"')
    tags = obj.get("tags") or []
    if isinstance(tags, str):
        tags = _split_tags(tags)
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise IngestError('"tags" must be a list of strings')
    published = _opt_str(obj, "published")
    if published is not None:
        iso = normalize_date(published)
        if iso is None:
            raise IngestError(f'"published" is not a date: {published[:40]!r}')
        published = iso
    return Article(id=doc_id.strip(), title=" ".join(title.split()),
                   paragraphs=[p for p in paragraphs if not is_boilerplate(p.text)],
                   source=_opt_str(obj, "source"), author=_opt_str(obj, "author"), url=_opt_str(obj, "url"),
                   published=published, tags=tags, path=path)


def validate_doc_id(doc_id: str) -> str:
    """The one rule for a document id, wherever one comes in (files, JSONL, the admin API, `qa remove`, lookups).

    1 to 512 characters without NUL, other control characters (line breaks pass) or lone surrogates, and an id
    that round-trips through a URL path: no leading "/", no "//" and no "." or ".." segment, since proxies merge
    slashes and HTTP clients remove dot segments, which would turn `GET`/`DELETE /api/documents/<id>` into a
    request for another document.
    """
    if not doc_id or len(doc_id) > MAX_DOC_ID_CHARS or _DOC_ID_CONTROL.search(doc_id):
        raise IngestError(f"invalid document id: 1 to {MAX_DOC_ID_CHARS} characters, without NUL or control "
                          "characters other than line breaks, and valid Unicode")
    if doc_id.startswith("/") or "//" in doc_id or {".", ".."} & set(doc_id.split("/")):
        raise IngestError('invalid document id: it must not start with "/" or hold "//" or a "." or ".." path '
                          "segment, so that its URL /api/documents/<id> reaches it and no other document")
    return doc_id


def read_jsonl(path: str, on_problem: ProblemSink) -> Iterator[Article]:
    """Articles of a JSONL file, one a line; bad lines go to `on_problem` with their line number."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.decode("utf-8", errors="replace")
            if "\ufffd" in line and b"\xef\xbf\xbd" not in raw:
                on_problem(Problem(path, lineno, "invalid UTF-8, decoded with replacement characters"))
            if not line.strip():
                continue
            try:
                yield article_from_dict(json.loads(line), path=path)
            except ValueError as e:
                on_problem(Problem(path, lineno, f"malformed JSON: {e}"))
            except IngestError as e:
                on_problem(Problem(path, lineno, str(e)))


# --- files and folders ---------------------------------------------------------------------------------------

def _doc_id_for(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    stem, ext = os.path.splitext(rel)
    return validate_doc_id(stem.replace(os.sep, "/") if ext.lower() in KNOWN_EXTS else rel.replace(os.sep, "/"))


def _read_text_file(path: str, on_problem: ProblemSink) -> str | None:
    with open(path, "rb") as f:
        data = f.read()
    if b"\x00" in data[:8192]:
        on_problem(Problem(path, None, "binary file skipped"))
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        on_problem(Problem(path, None, "invalid UTF-8, decoded with replacement characters"))
        return data.decode("utf-8", errors="replace")


def read_file(path: str, root: str, on_problem: ProblemSink) -> Iterator[Article]:
    """Articles in one file, by its extension; problems go to `on_problem`."""
    ext = os.path.splitext(path)[1].lower()
    if ext in JSONL_EXTS:
        yield from read_jsonl(path, on_problem)
        return
    text = _read_text_file(path, on_problem)
    if text is None:
        return
    if not text.strip():
        on_problem(Problem(path, None, "empty file skipped"))
        return
    try:
        doc_id = _doc_id_for(path, root)
        if ext in HTML_EXTS or (ext not in MARKDOWN_EXTS and re.match(r"\s*(<!doctype html|<html)", text, re.I)):
            article = parse_html(text, doc_id, path=path)
        else:
            article = parse_text(text, doc_id, markdown=ext in MARKDOWN_EXTS, path=path)
    except IngestError as e:  # reported with the file's name, also when --strict makes it fatal
        on_problem(Problem(path, None, str(e)))
        return
    if not article.paragraphs:
        on_problem(Problem(path, None, "no article paragraphs found"))
        return
    yield article


def iter_files(source: str) -> Iterator[tuple[str, str]]:
    """(path, root) for a file, or for every known file under a folder, walked recursively in sorted order."""
    if os.path.isdir(source):
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in KNOWN_EXTS - {""}:
                    yield os.path.join(dirpath, name), source
    elif os.path.exists(source):
        yield source, os.path.dirname(source) or "."
    else:
        raise IngestError(f"no such file or folder: {source}")


def read_sources(sources: Iterable[str], *, strict: bool = False,
                 on_problem: ProblemSink | None = None) -> Iterator[Article]:
    """Articles from files, folders and JSONL; problems are logged (or raise with `strict`), the rest is read."""

    def report(problem: Problem) -> None:
        if strict:
            raise IngestError(str(problem))
        log.warning("%s", problem)
        if on_problem:
            on_problem(problem)

    for source in sources:
        for path, root in iter_files(source):
            try:
                yield from read_file(path, root, report)
            except OSError as e:
                report(Problem(path, None, f"cannot read: {e.strerror or e}"))
            except IngestError as e:
                if strict:
                    raise
                report(Problem(path, None, str(e)))
