"""Request parameters: validated with one clear error each."""
import pytest

from qa.errors import BadRequest
from qa.params import query_string_params, validate_k, validate_query


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


def test_query_string_params_keep_first_values_and_name_a_repeated_key():
    got = query_string_params([("k", "3"), ("x", "1"), ("q", "a"), ("x", "2")])
    assert got == {"q": "a", "k": "3", "mode": None, "source": None, "doc_id": None, "published_after": None,
                   "published_before": None}
    with pytest.raises(BadRequest, match="^q given more than once$"):
        query_string_params([("mode", "dense"), ("mode", "lexical"), ("q", "a"), ("q", "b")])
