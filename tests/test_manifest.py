"""The index folder's manifest: its keys, and one clear line for a missing, corrupt or older one."""
import json
import os

import pytest

from qa.errors import IndexUnavailable
from qa.index import load_index
from qa.manifest import Manifest


def test_missing_or_corrupt_index_names_the_fix(tmp_path, built, fake_embedder):
    with pytest.raises(IndexUnavailable, match="qa build"):
        load_index(str(tmp_path / "nothing"))
    with open(os.path.join(built, "manifest.json"), "w") as f:
        f.write("{broken")
    with pytest.raises(IndexUnavailable, match="qa build"):
        load_index(built)


def test_an_older_format_is_refused_in_one_line_naming_the_rebuild(built):
    m = json.load(open(os.path.join(built, "manifest.json")))
    json.dump({**m, "format": 2}, open(os.path.join(built, "manifest.json"), "w"))
    with pytest.raises(IndexUnavailable, match=f"index in {built} has format 2; this version reads format 3: "
                                               f"rebuild it with qa build SOURCE... --index-dir {built}"):
        load_index(built)


def test_the_manifest_keeps_its_keys(built):
    m = json.load(open(os.path.join(built, "manifest.json")))
    assert Manifest.load(built).to_dict() == m
    assert set(m) == {"format", "package_version", "model", "model_path", "dim", "embed_backend", "vector_backend",
                      "index_kind", "data_dir", "counts", "generation", "built_at", "updated_at", "chunking"}
