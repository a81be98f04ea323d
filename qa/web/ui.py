"""The web search box: one server-rendered page, works without JavaScript; `/?q=...` is a shareable URL."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Blueprint, current_app, render_template, request
from markupsafe import Markup, escape

from ..errors import QAError
from ..text import query_terms

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/static")


# what a browser drops from a URL before reading its scheme: C0 controls and spaces at the ends, tabs and line
# breaks anywhere (WHATWG URL parsing), so " JaVaScRiPt:" and "java\tscript:" are javascript: URLs to it
_URL_ENDS = "".join(map(chr, range(0x21)))
_URL_DROPPED = re.compile("[\t\n\r]")


@bp.app_template_filter("safe_url")
def safe_url(url: str | None) -> str | None:
    """`url` as a browser would read it when it is an absolute http(s) URL with a host, else None: the one rule
    for what may become a link."""
    if not url:
        return None
    cleaned = _URL_DROPPED.sub("", url.strip(_URL_ENDS))
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


def error_page(message: str, status: int) -> tuple[str, int]:
    """The search page showing an error, for HTTP errors outside the API."""
    return render_template("index.html", q="", error=message, answer=None, results=[]), status


@bp.get("/")
def index() -> str | tuple[str, int]:
    """The search box; with `q`, the answer and the ranked passages below it."""
    q = request.args.get("q", "")
    if not q.strip():
        return render_template("index.html", q="", answer=None, results=[], error=None)
    engine = current_app.extensions["qa_engine"]
    try:
        answer = engine.answer({"q": q, "k": request.args.get("k"), "mode": request.args.get("mode")})
    except QAError as e:
        return render_template("index.html", q=q, answer=None, results=[], error=str(e)), e.status
    spans = answer.highlights()
    cited = {c["passage_id"]: c["n"] for c in answer.citations}
    terms = query_terms(answer.question)
    results = [{"hit": h, "n": cited.get(h.passage.passage_id),
                "html": highlight(h.passage.text, spans.get(h.passage.passage_id, []), terms)}
               for h in answer.search.hits]
    return render_template("index.html", q=q, answer=answer, results=results, error=None)
