"""Defaults in one dataclass; environment variables QA_* override them."""
from __future__ import annotations

import dataclasses
import logging
import os

from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_INDEX_DIR = "index"
# decoded rows a store keeps between searches (docs/performance.md#row-cache): unless told a budget, every row of a
# collection whose rows fit in this share of the machine's memory, else this many MiB of the most recently used
ROW_CACHE_SHARE = 1 / 8
ROW_CACHE_MB = 32


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_number(name: str, default: float | None = None, *, whole: bool = False) -> float | None:
    """A numeric QA_* setting (`whole`: an integer, such as a thread count), at least 0; `default` when unset."""
    value = _env(name)
    if value is None:
        return default
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        number = -1
    if not number >= 0:  # also NaN
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name} must be {kind} of 0 or more, not {value!r}")
    return number


def _row_cache_mb() -> float | None:
    """QA_ROW_CACHE_MB: a budget in MiB, or None for the automatic one (unset or `auto`)."""
    value = _env("QA_ROW_CACHE_MB")
    if value is None or value.strip().lower() == "auto":
        return None
    try:
        return env_number("QA_ROW_CACHE_MB")
    except ConfigError:
        raise ConfigError(f"QA_ROW_CACHE_MB must be a number of 0 or more, or auto, not {value!r}") from None


def _admin_token() -> str | None:
    """QA_ADMIN_TOKEN without surrounding white space (no header could match it); a blank one leaves the admin API
    off, with a warning, rather than on with a token nobody can send."""
    raw = os.environ.get("QA_ADMIN_TOKEN")
    token = raw.strip() if raw else None
    if raw and not token:
        log.warning("QA_ADMIN_TOKEN is blank: the admin API stays off")
    return token or None


@dataclasses.dataclass
class Config:
    """Settings of the service; `Config.from_env()` applies QA_* overrides."""

    index_dir: str = DEFAULT_INDEX_DIR
    model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    embed_backend: str = "auto"  # auto | torch | onnx
    admin_token: str | None = None
    reload_interval: float = 2.0  # seconds between checks for a rebuilt index
    row_cache_mb: float | None = None  # None: automatic (ROW_CACHE_SHARE, then ROW_CACHE_MB)
    max_query_chars: int = 1000
    max_k: int = 100
    max_body_bytes: int = 1024 * 1024

    @classmethod
    def from_env(cls, **overrides) -> "Config":
        """Defaults, then QA_* environment variables, then explicit overrides (None means unset)."""
        cfg = cls(
            index_dir=_env("QA_INDEX_DIR", DEFAULT_INDEX_DIR),
            model=_env("QA_MODEL"),
            embed_backend=_env("QA_EMBED_BACKEND", "auto"),
            admin_token=_admin_token(),
            reload_interval=env_number("QA_RELOAD_INTERVAL", 2.0),
            row_cache_mb=_row_cache_mb(),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg
