"""Files written whole or not at all: a temporary name beside the target, fsync, then rename into place."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file name beside `path` for a writer to fill (by name: FAISS, ONNX and tantivy write files
    themselves); on success it is fsynced and renamed to `path`, on failure removed. Readers see the old file or the
    new one, never a part."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask's mode, as open() gives
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def atomic_write(path: str, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path: str, obj: object) -> None:
    """Write JSON (indented, keys sorted, one trailing newline) to `path` atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened, as on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
