"""The `qa` command: thin wrappers over the package's functions; domain errors become one readable line."""
from __future__ import annotations

import functools
import json
import logging
import os
import sys

import click

from . import process
from .config import Config
from .errors import QAError

log = logging.getLogger(__name__)


def _handle_errors(fn):
    """Print a `QAError` (and an interrupted run) as one line on stderr with a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QAError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2 if e.status < 500 else 3)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            click.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            sys.exit(2)

    return wrapper


def _index_dir_option(fn):
    return click.option("--index-dir", type=click.Path(file_okay=False), default=None,
                        help="Index folder [default: $QA_INDEX_DIR or ./index].")(fn)


def _config(**overrides) -> Config:
    return Config.from_env(**overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress and details.")
@click.version_option(package_name="qa-news")
def main(verbose: bool) -> None:
    """Semantic search and extractive question answering over news articles."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- build / add / remove / check ---

def _fetch_options(fn):
    """The options of `build` and `add` for sources on the web."""
    for opt in reversed([
        click.option("--sources-file", "sources_files", multiple=True, type=click.Path(dir_okay=False),
                     help="A file listing sources, one URL or path a line (# comments; paths relative to the file); "
                          "repeatable."),
        click.option("--ignore-robots", is_flag=True, help="Fetch pages robots.txt disallows (sites you own)."),
        click.option("--fetch-delay", type=click.FloatRange(0, 600), default=1.0, show_default=True,
                     help="Seconds between two requests to one host (at most 2 at a time per host)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the report as one JSON object, each URL and feed with its outcome."),
    ]):
        fn = opt(fn)
    return fn


def _all_sources(sources: tuple[str, ...], sources_files: tuple[str, ...]) -> list[str]:
    """The sources given as arguments, then those the sources files list; a usage error when there are none."""
    from .fetch import read_sources_file

    found = list(sources)
    for path in sources_files:
        found += read_sources_file(path)
    if not found:
        raise click.UsageError("give SOURCES (files, folders, URLs, feeds) or --sources-file")
    return found


def _fetch_settings(ignore_robots: bool, fetch_delay: float):
    from .fetch import FetchOptions

    return FetchOptions(ignore_robots=ignore_robots, delay=fetch_delay)


def _report_json(report, **extra) -> str:
    """A build's or update's report as `--json` prints it."""
    body = {"index_dir": report.index_dir, "documents": report.documents, "passages": report.passages,
            "added": report.added, "updated": report.updated, "unchanged": report.unchanged,
            "problems": report.problems, "seconds": round(report.seconds, 3), **extra,
            "fetch": report.fetch.to_dict() if report.fetch else None}
    return json.dumps(body, ensure_ascii=False, indent=2)


def _echo_problems(report) -> None:
    """Each problem (an unreadable file, a failed URL with its reason) as one warning line on stderr."""
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)

def _backend_choices(values: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Split repeated --backend values into (embedding backend, vector backend)."""
    embed, vector = None, None
    for v in values:
        if v in ("torch", "onnx"):
            embed = v
        else:
            vector = v
    return embed, vector


@main.command()
@click.argument("sources", nargs=-1)
@_index_dir_option
@click.option("--model", default=None, help="A local sentence-transformers model folder [default: $QA_MODEL or "
                                            "the packaged all-MiniLM-L6-v2].")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["torch", "onnx", "faiss", "milvus"]),
              help="Embedding backend (torch, onnx) and/or vector backend (faiss, milvus); repeatable.")
@click.option("--index-type", "kind", type=click.Choice(["auto", "flat", "hnsw", "ivfpq"]), default="auto",
              show_default=True,
              help="Vector index type; auto picks exact search below 100k vectors, HNSW (SQ8) above.")
@click.option("--milvus-uri", default=None, help="Milvus server (http://host:19530) or Milvus Lite file (*.db) "
                                                 "[default: milvus.db in the index folder]; implies --backend milvus.")
@click.option("--milvus-token", default=None, envvar="QA_MILVUS_TOKEN", show_envvar=True,
              help="Milvus token (user:password or API key); never written to the index folder.")
@click.option("--milvus-alias", default=None, help="A fixed Milvus alias for this index [default: the folder's own, "
                                                   "made unique on its first build]; implies --backend milvus.")
@click.option("--store", type=click.Choice(["sqlite", "milvus"]), default=None,
              help="Where documents, passages and sentences live: the index folder's SQLite, or Milvus with the "
                   "vectors (a cluster index shared by replicas; needs --backend milvus) [default: the live "
                   "index's, else sqlite].")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable file, bad JSONL line or failed URL or "
                                            "feed, writing nothing (exit 2).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fetch_options
@_handle_errors
def build(sources: tuple[str, ...], index_dir: str | None, model: str | None, backends: tuple[str, ...], kind: str,
          milvus_uri: str | None, milvus_token: str | None, milvus_alias: str | None, store: str | None,
          strict: bool, quiet: bool, sources_files: tuple[str, ...], ignore_robots: bool, fetch_delay: float,
          as_json: bool) -> None:
    """Full build of the index from files, folders, JSONL, URLs and RSS/Atom feeds (beside the live index, then an
    atomic swap). A URL or feed that fails keeps its documents from the live index."""
    from .index import build_index

    cfg = _config(index_dir=index_dir, model=model)
    embed_backend, vector_backend = _backend_choices(backends)
    report = build_index(_all_sources(sources, sources_files), cfg.index_dir, model=cfg.model, kind=kind,
                         backend=embed_backend or cfg.embed_backend, strict=strict, progress=not quiet,
                         vector_backend=vector_backend, milvus_uri=milvus_uri, milvus_token=milvus_token,
                         milvus_alias=milvus_alias, fetch=_fetch_settings(ignore_robots, fetch_delay), store=store)
    if as_json:
        click.echo(_report_json(report, replayed=report.replayed))
        return
    _echo_problems(report)
    if report.fetch:
        click.echo(report.fetch.summary())
    replayed = f", {report.replayed} writes made meanwhile replayed" if report.replayed else ""
    click.echo(f"built {cfg.index_dir}: {report.documents} documents, {report.passages} passages "
               f"in {report.seconds:.1f}s ({len(report.problems)} problems{replayed})")


@main.command()
@click.argument("sources", nargs=-1)
@_index_dir_option
@click.option("--strict", is_flag=True, help="Fail on the first unreadable file, bad JSONL line or failed URL or "
                                            "feed, writing nothing (exit 2).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fetch_options
@_handle_errors
def add(sources: tuple[str, ...], index_dir: str | None, strict: bool, quiet: bool, sources_files: tuple[str, ...],
        ignore_robots: bool, fetch_delay: float, as_json: bool) -> None:
    """Add or update documents from files, folders, URLs and feeds without a full rebuild (unchanged documents are
    skipped). URLs and feeds are fetched with conditional requests, so only changed pages are indexed again; a
    source that fails changes nothing."""
    from .index import add_documents

    cfg = _config(index_dir=index_dir)
    report = add_documents(_all_sources(sources, sources_files), cfg.index_dir, strict=strict, progress=not quiet,
                           fetch=_fetch_settings(ignore_robots, fetch_delay))
    if as_json:
        click.echo(_report_json(report))
        return
    _echo_problems(report)
    if report.fetch:
        click.echo(report.fetch.summary())
    click.echo(f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}; "
               f"{report.documents} documents, {report.passages} passages ({report.seconds:.1f}s)")


@main.command()
@click.argument("doc_ids", nargs=-1, required=True)
@_index_dir_option
@_handle_errors
def remove(doc_ids: tuple[str, ...], index_dir: str | None) -> None:
    """Delete documents by id."""
    from .index import remove_documents
    from .ingest import validate_doc_id

    for doc_id in doc_ids:
        validate_doc_id(doc_id)
    cfg = _config(index_dir=index_dir)
    report = remove_documents(list(doc_ids), cfg.index_dir)
    click.echo(f"removed {report.removed}; {report.documents} documents, {report.passages} passages")


@main.command()
@_index_dir_option
@_handle_errors
def upgrade(index_dir: str | None) -> None:
    """Bring an index made by an earlier version up to this one in place, without embedding again (servers use
    what it adds from their next start)."""
    from .index import upgrade_index

    cfg = _config(index_dir=index_dir)
    done = upgrade_index(cfg.index_dir)
    if not done.passages:
        click.echo(f"up to date: {cfg.index_dir}")
        return
    click.echo(f"upgraded {cfg.index_dir}: the words of {done.passages} passages stored ({done.seconds:.1f}s)")


@main.command()
@_index_dir_option
@_handle_errors
def check(index_dir: str | None) -> None:
    """Verify that the store, the vector index, the lexical index and the manifest agree."""
    from .index import check_index

    cfg = _config(index_dir=index_dir)
    problems = check_index(cfg.index_dir)
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        sys.exit(1)
    click.echo(f"ok: {cfg.index_dir} is consistent")


@main.command()
@_index_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_handle_errors
def stats(index_dir: str | None, as_json: bool) -> None:
    """Counts, model and settings of an index."""
    from .index import describe_index

    cfg = _config(index_dir=index_dir)
    m = describe_index(cfg.index_dir)
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2, sort_keys=True))
        return
    c = m.counts
    click.echo(f"index:     {os.path.abspath(cfg.index_dir)}\n"
               f"documents: {c.documents}\npassages:  {c.passages}\n"
               f"vectors:   {c.windows} (+{c.sentences} sentence vectors)\n"
               f"model:     {m.model} (dim {m.dim}, {m.embed_backend})\n"
               f"index:     {m.vector_backend} {m.index_kind}\nbuilt:     {m.built_at}\n"
               f"updated:   {m.updated_at}")


# --- search / ask / eval ---

def _search_options(fn):
    for opt in reversed([
        click.option("-k", "k", default=None, help="Number of results (1-100)."),
        click.option("--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default="hybrid",
                     show_default=True),
        click.option("--source", default=None, help="Only this outlet."),
        click.option("--doc-id", default=None, help="Only this document."),
        click.option("--published-after", default=None, help="ISO date, inclusive."),
        click.option("--published-before", default=None, help="ISO date, inclusive."),
        click.option("--json", "as_json", is_flag=True, help="Print the API's JSON object."),
        _index_dir_option,
    ]):
        fn = opt(fn)
    return fn


def _engine(index_dir):
    from .service import Engine

    return Engine(_config(index_dir=index_dir))


@main.command()
@click.argument("question")
@_search_options
@_handle_errors
def search(question: str, as_json: bool, index_dir: str | None, **params: str | None) -> None:
    """Ranked passages for a question, with citations."""
    body = _engine(index_dir).search({"q": question, **params})
    if as_json:
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    if not body["results"]:
        click.echo("no results")
    for r in body["results"]:
        c = r["citation"]
        meta = ", ".join(x for x in (c["source"], c["author"], c["published"]) if x)
        click.echo(f"{r['rank']}. [{r['score']:.3f}] {r['title']}" + (f" ({meta})" if meta else "")
                   + f" ¶{r['paragraph_index'] + 1}")  # counted from 1 for people, as on the web page
        click.echo("   " + r["text"] + "\n")


@main.command()
@click.argument("question")
@_search_options
@_handle_errors
def ask(question: str, as_json: bool, index_dir: str | None, **params: str | None) -> None:
    """An extractive answer with numbered citations."""
    body = _engine(index_dir).ask({"q": question, **params})
    if as_json:
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    if body["no_answer"]:
        click.echo("No answer: nothing in the collection answers this question well enough.")
    else:
        click.echo(body["answer"]["text"] + "\n")
    for c in body["citations"]:
        meta = ", ".join(x for x in (c["source"], c["author"], c["published"]) if x)
        click.echo(f"[{c['n']}] {c['title']}" + (f" ({meta})" if meta else "")
                   + f", paragraph {c['paragraph_index'] + 1}" + (f" <{c['url']}>" if c["url"] else ""))


@main.command("eval")
@click.argument("questions", type=click.Path(exists=True, dir_okay=False))
@_index_dir_option
@click.option("--mode", type=click.Choice(["hybrid", "dense", "lexical"]), default="hybrid", show_default=True)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option("--limit", type=int, default=None, help="Only the first N questions.")
@click.option("--no-answers", is_flag=True, help="Skip answer extraction (retrieval metrics only).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_handle_errors
def eval_(questions: str, index_dir: str | None, mode: str, k: int, limit: int | None, no_answers: bool,
          as_json: bool) -> None:
    """Retrieval and answer quality on a question set: R@1, R@5, R@10, MRR@10, answer_hit@1, latency."""
    from threadpoolctl import threadpool_limits

    from .evaluate import evaluate, read_questions

    engine = _engine(index_dir)
    qs = read_questions(questions, limit)
    index = engine.index()  # loads the libraries whose thread pools the limit below reaches
    bar = None
    if not as_json:
        from tqdm import tqdm

        bar = tqdm(total=len(qs), desc="questions", file=sys.stderr, mininterval=1.0)
    # one thread a library, as a server runs a question (docs/performance.md#threads), so the latencies are a
    # server's: their pools otherwise spin against the question's own work, three times as slow
    with threadpool_limits(1):
        out = evaluate(index, qs, k=k, mode=mode, answers=not no_answers,
                       progress=(lambda i: bar.update(1)) if bar else None)
    if bar:
        bar.close()
    if as_json:
        click.echo(json.dumps(out))
        return
    for key in ("questions", "mode", "k", "recall@1", "recall@5", "recall@10", "mrr@10", "answer_hit@1",
                "latency_p50_ms", "latency_p95_ms"):
        v = out[key]
        click.echo(f"{key:16s} {v:.4f}" if isinstance(v, float) else f"{key:16s} {v}")


# --- serve ---

@main.command()
@_index_dir_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Request threads per process: one runs Python while another is in the model or FAISS; more "
                   "only queue for Python's lock (docs/performance.md#threads).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes, each with its own model and index (Python runs one thread at a time per "
                   "process, so this is how queries use several cores).")
@_handle_errors
def serve(index_dir: str | None, host: str, port: int, threads: int, workers: int) -> None:
    """Serve the JSON API and the web search box with a production WSGI server (granian)."""
    from .web import server

    cfg = _config(index_dir=index_dir)
    _check_workers(cfg.index_dir, workers)
    process.tune_malloc()
    process.serving_encode_threads()
    server.check_port_free(host, port)
    click.echo(f"serving {os.path.abspath(cfg.index_dir)} on http://{host}:{port}"
               + (f" ({workers} workers)" if workers > 1 else ""), err=True)
    server.run_granian(functools.partial(server.load_app, cfg), host, port, workers, threads)


def _check_workers(index_dir: str, workers: int) -> None:
    """Refuse, before any server starts, more worker processes than the index's vector store allows."""
    from .manifest import Manifest
    from .vectors.milvus import check_workers

    if workers <= 1:
        return
    try:
        manifest = Manifest.load(index_dir)
    except QAError:  # no index yet: the server starts without one
        return
    check_workers(index_dir, manifest, workers)


if __name__ == "__main__":
    main()
