"""Request parameters: validated with one clear error each."""
import pytest

from qa.errors import BadRequest
from qa.params import validate_k, validate_query


@pytest.mark.parametrize("k", [0, -1, 101, "abc", "1e9", 1.5, True, "", None])
def test_bad_k(k):
    if k in ("", None):
        assert validate_k(k) == 10
    else:
        with pytest.raises(BadRequest):
            validate_k(k)


@pytest.mark.parametrize("q", [None, "", "   ", "x" * 1001, 5, "a\x00b"])
def test_bad_query(q):
    with pytest.raises(BadRequest):
        validate_query(q)
