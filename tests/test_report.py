"""The results tables of README.md and docs/ are what experiments/report.py makes of the results files."""
import shutil

from experiments import report


def test_committed_tables_match_their_results_files():
    assert report.stale() == []


def test_a_number_edited_by_hand_is_caught(tmp_path):
    shutil.copy(report.REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(report.REPO / "docs", tmp_path / "docs")
    assert report.stale(tmp_path) == []
    text = (tmp_path / "README.md").read_text()
    start = text.index("<!-- table: headline -->")
    cell = text.index("| 0.", start) + 2  # the first number of the table
    (tmp_path / "README.md").write_text(text[:cell] + ("1" if text[cell] != "1" else "2") + text[cell + 1:])
    assert report.stale(tmp_path) == ["README.md"]
    assert report.main(["--check", "--root", str(tmp_path)]) == 1
    assert report.main(["--root", str(tmp_path)]) == 0  # rewriting restores it
    assert report.stale(tmp_path) == []


def test_every_results_file_is_shown_and_every_table_has_one():
    names = {m["name"] for p in report.documents(report.REPO)
             for m in report.BLOCK.finditer(p.read_text(encoding="utf-8"))}
    files = {p.stem for p in (report.REPO / report.RESULTS).glob("*.json")}
    recorded = {n for n in files if "columns" in report._load(n + ".json", report.REPO)}
    assert recorded <= names, f"results files no document shows: {recorded - names}"
    assert names <= set(report.TABLES) | recorded


def test_a_recorded_table_and_an_unknown_one(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "speed.json").write_text(
        '{"recorded": {"document": "docs/a.md", "commit": "abc1234", "date": "2026-12-05"},'
        ' "columns": ["path", "products/s"], "rows": [["(a) stock", 12.5], ["(b) ours", null]]}')
    (tmp_path / "README.md").write_text("<!-- table: speed -->\nold\n<!-- /table -->\n")
    (tmp_path / "docs" / "a.md").write_text("<!-- table: nothing-here -->\n<!-- /table -->\n")
    text = report.render((tmp_path / "README.md").read_text(), tmp_path)
    assert "| path | products/s |\n|---|---|\n| (a) stock | 12.5 |\n| (b) ours | - |" in text
    try:
        report.stale(tmp_path)
    except SystemExit as e:
        assert "docs/a.md" in str(e) and "nothing-here" in str(e)
    else:
        raise AssertionError("an unknown table name must stop the report")
