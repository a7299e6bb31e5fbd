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
