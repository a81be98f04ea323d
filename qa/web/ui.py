"""The reader's pages, server-rendered and working without JavaScript: the search box (`/?q=...`, filters in the
URL, so a search is shareable), the collection (`/documents`) and the article view (`/documents/<id>`), where
every citation opens at its paragraph with the cited span marked."""
from __future__ import annotations

import dataclasses
import re
from urllib.parse import urlsplit

from flask import Blueprint, current_app, render_template, request, url_for
from markupsafe import Markup, escape

from ..errors import BadRequest, NotFound, QAError
from ..params import parse_int, validate_source
from ..service import Engine
from ..search import MODES
from ..store import OutletCount, StoredPassage
from ..text import query_terms

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

PAGE_SIZE = 50  # articles a page of the collection
MAX_OUTLET_OPTIONS = 200  # the outlet select lists the largest outlets; a longer list is no use as a select
FILTER_KEYS = ("source", "published_after", "published_before", "mode")
_SPAN = re.compile(r"(\d{1,9})-(\d{1,9})")


# what a browser drops from a URL before reading its scheme: C0 controls and spaces at the ends, tabs and line
# breaks anywhere (WHATWG URL parsing), so " JaVaScRiPt:" and "java\tscript:" are javascript: URLs to it
_URL_ENDS = "".join(map(chr, range(0x21)))
_URL_DROPPED = re.compile("[\t\n\r]")


@bp.app_template_filter("safe_url")
def safe_url(url: object) -> str | None:
    """`url` as a browser would read it when it is an absolute http(s) URL with a host, else None: the one rule
    for what may become a link (a `javascript:`, `data:` or relative URL from a document is shown as text)."""
    if not isinstance(url, str):
        return None
    cleaned = _URL_DROPPED.sub("", url.strip(_URL_ENDS))
    if any(c in _URL_ENDS for c in cleaned):  # a space or control character left inside: no valid URL holds one
        return None
    try:
        parts = urlsplit(cleaned)
    except ValueError:  # e.g. an invalid IPv6 host
        return None
    return cleaned if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def highlight(text: str, spans: list[tuple[int, int]], terms: list[str]) -> Markup:
    """Escaped passage text with answer spans in <mark> and the query's words in <em>."""
    word_re = re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")\w*", re.I) if terms else None

    def words(chunk: str) -> str:
        if not word_re:
            return str(escape(chunk))
        out, last = [], 0
        for m in word_re.finditer(chunk):
            out.append(str(escape(chunk[last:m.start()])))
            out.append(f"<em>{escape(m.group(0))}</em>")
            last = m.end()
        out.append(str(escape(chunk[last:])))
        return "".join(out)

    out, last = [], 0
    for start, end in sorted(spans):
        if start < last:
            continue
        out.append(words(text[last:start]))
        out.append(f'<mark class="answer">{words(text[start:end])}</mark>')
        last = end
    out.append(words(text[last:]))
    return Markup("".join(out))


def article_href(doc_id: str, paragraph_index: int, span: tuple[int, int] | None = None, *,
                 external: bool = False) -> str:
    """The article view at a paragraph, with `span` (start, end in the paragraph's text) marked and scrolled to."""
    if span is None:
        return url_for("ui.document", doc_id=doc_id, p=paragraph_index, _anchor=f"p{paragraph_index}",
                       _external=external)
    return url_for("ui.document", doc_id=doc_id, hl=f"{span[0]}-{span[1]}", p=paragraph_index, _anchor="hl",
                   _external=external)


def citation_text(p: StoredPassage) -> str:
    """A plain-text reference to a passage: author, "title", outlet, date, the article's http(s) URL (else its
    article view here), paragraph number."""
    parts = [p.author, f'"{p.title}"', p.source, p.published,
             safe_url(p.url) or article_href(p.doc_id, p.paragraph_index, external=True),
             f"paragraph {p.paragraph_index + 1}"]
    return ", ".join(part.strip() for part in parts if part and part.strip()) + "."


@dataclasses.dataclass
class SearchForm:
    """The search form's values as the URL gives them, and the outlets its select offers."""

    q: str = ""
    source: str = ""
    published_after: str = ""
    published_before: str = ""
    mode: str = ""
    k: str = ""
    outlets: list[OutletCount] = dataclasses.field(default_factory=list)

    @property
    def filtered(self) -> int:
        """How many filters the URL sets (the options disclosure opens when any is)."""
        return sum(1 for key in FILTER_KEYS if getattr(self, key) and not (key == "mode" and self.mode == "hybrid"))

    @property
    def outlet_options(self) -> list[str]:
        """The outlet select's values: the largest outlets, and the URL's outlet even when it is not among them."""
        names = [o.source for o in self.outlets[:MAX_OUTLET_OPTIONS] if o.source]
        if self.source and self.source.casefold() not in {n.casefold() for n in names}:
            names.append(self.source)
        return names

    def params(self) -> dict:
        """The engine's request parameters."""
        return {"q": self.q, "k": self.k or None, **{key: getattr(self, key) or None for key in FILTER_KEYS}}


@bp.app_context_processor
def _page_context() -> dict:
    """What every page's header needs: the search modes of the options disclosure."""
    return {"modes": MODES}


def engine() -> Engine:
    """The app's engine."""
    return current_app.extensions["qa_engine"]


def search_form(with_outlets: bool = True) -> SearchForm:
    """The form's values from the URL (the first of a repeated parameter), and the collection's outlets."""
    form = SearchForm(**{key: request.args.get(key, "") for key in ("q", "k", *FILTER_KEYS)})
    if with_outlets:
        try:
            form.outlets = engine().outlets()
        except QAError:  # no usable index: the page says so where it needs one
            pass
    return form


def error_page(message: str, status: int, form: SearchForm | None = None) -> tuple[str, int]:
    """A page showing an error with its status (an unknown article, a bad parameter, no index, a wrong URL)."""
    titles = {400: "Invalid request", 404: "Not found", 503: "The collection is unavailable"}
    return render_template("error.html", form=form or search_form(with_outlets=False), message=message,
                           heading=titles.get(status, "Error"), status=status), status


@bp.get("/")
def index() -> str | tuple[str, int]:
    """The search box; with `q`, the answer and the ranked passages below it, filtered as the URL says."""
    form = search_form()
    if not form.q.strip():
        return render_template("index.html", form=form, answer=None, results=[], error=None)
    try:
        answer = engine().answer(form.params())
    except QAError as e:
        return render_template("index.html", form=form, answer=None, results=[], error=str(e)), e.status
    spans = answer.highlights()
    cited = {c["passage_id"]: c["n"] for c in answer.citations}
    terms = query_terms(answer.question)
    hits = {h.passage.passage_id: h.passage for h in answer.search.hits}
    sentences = [{"text": s.text, "n": s.citation,
                  "href": article_href(hits[s.passage_id].doc_id, hits[s.passage_id].paragraph_index,
                                       (s.start, s.end))}
                 for s in answer.sentences]
    results = []
    for h in answer.search.hits:
        p, own = h.passage, sorted(spans.get(h.passage.passage_id, []))
        results.append({"hit": h, "n": cited.get(p.passage_id), "html": highlight(p.text, own, terms),
                        "href": article_href(p.doc_id, p.paragraph_index, own[0] if own else None),
                        "url": safe_url(p.url), "citation": citation_text(p)})
    return render_template("index.html", form=form, answer=answer, sentences=sentences, results=results,
                           error=None)


@bp.get("/documents")
def collection() -> str | tuple[str, int]:
    """The collection newest first, 50 a page, with the counts by outlet; `?source=` keeps one outlet's."""
    form = search_form()
    try:
        page = parse_int(request.args.get("page"), "page", 1, 1, 10**7)
        source = validate_source(request.args.get("source") or None)
        listing = engine().documents_newest((page - 1) * PAGE_SIZE, PAGE_SIZE, source)
        pages = max(1, -(-listing.total // PAGE_SIZE))
        if page > pages:
            raise NotFound(f"no page {page}: the collection has {pages} page{'s' if pages > 1 else ''} here")
    except QAError as e:
        return error_page(str(e), e.status, form)
    return render_template("documents.html", form=form, listing=listing, page=page, pages=pages, source=source,
                           offset=(page - 1) * PAGE_SIZE, total_documents=sum(o.documents for o in form.outlets))


def _cited_span(doc: dict) -> tuple[int | None, tuple[int, int] | None]:
    """The paragraph (`p`) and span (`hl=start-end` in that paragraph's text) the URL cites; BadRequest when they
    do not name a paragraph of this article and a span inside it."""
    p_arg, hl_arg = request.args.get("p"), request.args.get("hl")
    if p_arg in (None, "") and hl_arg in (None, ""):
        return None, None
    indexes = {para["paragraph_index"]: para for para in doc["paragraphs"]}
    if p_arg in (None, ""):
        raise BadRequest("hl needs p, the paragraph the span is in")
    p = parse_int(p_arg, "p", 0, 0, 10**9)
    if p not in indexes:
        raise BadRequest(f"p must be the index of one of this article's paragraphs (0 to {max(indexes)})")
    if hl_arg in (None, ""):
        return p, None
    m = _SPAN.fullmatch(hl_arg.strip())
    length = len(indexes[p]["text"])
    if not m or not int(m[1]) < int(m[2]) <= length:
        raise BadRequest(f"hl must be start-end with 0 <= start < end <= {length}, the length of paragraph {p}")
    return p, (int(m[1]), int(m[2]))


@bp.get("/documents/<doc_id:doc_id>")
def document(doc_id: str) -> str | tuple[str, int]:
    """One article as indexed, every paragraph anchored `#p<index>`; `?hl=start-end&p=index` marks a span."""
    form = search_form()
    try:
        doc = engine().document(doc_id)
        cited_p, span = _cited_span(doc)
    except QAError as e:
        return error_page(str(e), e.status, form)
    paragraphs = []
    for para in doc["paragraphs"]:
        text, html = para["text"], escape(para["text"])
        if span and para["paragraph_index"] == cited_p:
            html = Markup('{}<mark id="hl" class="answer cited-span">{}</mark>{}').format(
                text[:span[0]], text[span[0]:span[1]], text[span[1]:])
        paragraphs.append({"index": para["paragraph_index"], "html": html,
                           "cited": para["paragraph_index"] == cited_p})
    return render_template("document.html", form=form, doc=doc, url=safe_url(doc["url"]), paragraphs=paragraphs,
                           cited_p=cited_p, span=span)
