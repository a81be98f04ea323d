"""What a fetch did, source by source: the outcome of each URL and feed, one line per failure, the summary."""
from __future__ import annotations

import dataclasses

PAGE_STATUSES = ("new", "updated", "unchanged", "not_modified", "duplicate", "failed")


@dataclasses.dataclass
class SourceResult:
    """The outcome of one page or feed: `status` one of PAGE_STATUSES (a feed: "fetched", "not_modified",
    "failed"), `reason` why it failed or what it duplicates."""

    url: str
    kind: str  # "page" or "feed"
    status: str
    reason: str | None = None
    doc_id: str | None = None
    feed: str | None = None  # the feed that listed the page
    items: int | None = None  # a feed's items
    kept: bool = False  # failed, and its document from the live index was kept

    def line(self) -> str:
        """One line: the URL and its reason."""
        kept = "; the indexed copy is kept" if self.kept else ""
        return f"{self.url}: {self.reason}{kept}"

    def to_dict(self) -> dict:
        """The JSON object of `--json`, without empty fields."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False)}


@dataclasses.dataclass
class FetchReport:
    """Every source's outcome, in source order (a feed followed by its items)."""

    results: list[SourceResult] = dataclasses.field(default_factory=list)

    @property
    def failures(self) -> list[SourceResult]:
        """The pages and feeds that failed."""
        return [r for r in self.results if r.status == "failed"]

    def counts(self) -> dict[str, int]:
        """Pages fetched (a body read), not modified, new, updated, unchanged and duplicate; sources failed."""
        pages = [r for r in self.results if r.kind == "page"]
        counts = {s: sum(r.status == s for r in pages) for s in PAGE_STATUSES}
        counts["failed"] = len(self.failures)
        counts["fetched"] = sum(counts[s] for s in ("new", "updated", "unchanged", "duplicate"))
        counts["feeds"] = sum(r.kind == "feed" for r in self.results)
        return counts

    def summary(self) -> str:
        """The summary line: fetched, not modified, new, updated, failed (and duplicates, when any)."""
        c = self.counts()
        dup = f", {c['duplicate']} duplicate" if c["duplicate"] else ""
        return (f"fetched {c['fetched']}, not modified {c['not_modified']}, new {c['new']}, updated {c['updated']}, "
                f"failed {c['failed']}{dup}")

    def to_dict(self) -> dict:
        """The JSON object of `--json`."""
        return {"counts": self.counts(), "sources": [r.to_dict() for r in self.results]}
