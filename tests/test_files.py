"""Atomic writes: a reader sees the old file or the new one, never a part, and a failed write leaves no litter."""
import json
import os
import stat

import pytest

from qa.files import atomic_path, atomic_write, write_json_atomic


def test_a_write_replaces_the_file_whole(tmp_path):
    path = str(tmp_path / "manifest.json")
    atomic_write(path, "old\n")
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert json.loads(text) == {"a": [1, 2], "b": 1} and text.endswith("\n") and text.index('"a"') < text.index('"b"')
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "vectors.faiss")
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError), atomic_path(path, ".faiss") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("the writer died")
    assert open(path, "rb").read() == b"old" and os.listdir(tmp_path) == ["vectors.faiss"]


def test_the_file_gets_the_umask_s_mode_like_open(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "shared.json"), "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "shared.json").st_mode) == 0o644  # readable by a server of another user
