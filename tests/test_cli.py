"""The `qa` command: its JSON and text agree with the API's, and its errors are one line."""
import json

from click.testing import CliRunner

from qa.cli import main

CHINA = "what actions has China taken?"


def test_cli_search_json_matches_the_api(fake_client, fake_seed_index_dir):
    runner = CliRunner()
    res = runner.invoke(main, ["search", CHINA, "-k", "5", "--json", "--index-dir", fake_seed_index_dir])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.stdout)
    api = fake_client.get("/api/search", query_string={"q": CHINA, "k": 5}).get_json()
    assert [r["passage_id"] for r in cli["results"]] == [r["passage_id"] for r in api["results"]]


def test_cli_text_counts_paragraphs_from_one_as_the_web_page_does(fake_client, fake_seed_index_dir):
    runner = CliRunner()
    api = fake_client.get("/api/ask", query_string={"q": CHINA}).get_json()
    res = runner.invoke(main, ["ask", CHINA, "--index-dir", fake_seed_index_dir])
    c = api["citations"][0]
    assert res.exit_code == 0 and f"[1] {c['title']}" in res.stdout
    first = next(line for line in res.stdout.splitlines() if line.startswith("[1] "))
    assert first.endswith(f"paragraph {c['paragraph_index'] + 1}")
    top = fake_client.get("/api/search", query_string={"q": CHINA, "k": 1}).get_json()["results"][0]
    res = runner.invoke(main, ["search", CHINA, "-k", "1", "--index-dir", fake_seed_index_dir])
    assert res.stdout.splitlines()[0].endswith(f"¶{top['paragraph_index'] + 1}")


def test_cli_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(main, ["search", "china", "--index-dir", str(tmp_path / "none")])
    assert res.exit_code != 0 and "qa build" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["search", "china", "-k", "0", "--index-dir", str(tmp_path / "none")])
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_search_with_invalid_unicode_from_the_command_line_is_one_line(fake_seed_index_dir):
    res = CliRunner().invoke(main, ["search", "china\udcff", "--index-dir", fake_seed_index_dir])
    assert res.exit_code == 2 and '"q" holds invalid Unicode' in res.output and "Traceback" not in res.output
