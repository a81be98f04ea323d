"""Domain errors: each carries the HTTP status the API answers with."""


class QAError(Exception):
    """Base class for errors shown to users as one readable line."""

    status = 400


class BadRequest(QAError):
    """The request or the command line is invalid."""

    status = 400


class Unauthorized(QAError):
    """A missing or wrong admin token."""

    status = 401


class Forbidden(QAError):
    """The admin API is switched off."""

    status = 403


class NotFound(QAError):
    """An unknown document or passage."""

    status = 404


class IndexUnavailable(QAError):
    """The index folder is missing, corrupt, or built with another model."""

    status = 503


class IngestError(QAError):
    """A source file or JSONL line that cannot be read."""

    status = 400


class InsufficientStorage(QAError):
    """The index folder cannot take a write: its disk is full or it is read-only."""

    status = 507


class ConfigError(QAError):
    """A QA_* setting in the environment is not a value it can take."""

    status = 500
