"""The examples run as a newcomer would run them."""
import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_tag_a_csv_imports_trains_and_tags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = runpy.run_path(str(EXAMPLES / "tag_a_csv.py"))  # as a script, but main() called below
    rows = module["main"]([])
    assert len(rows) == 80  # every product of the synthetic CSV, none lost
    assert all(row["category"] and set(row["tag_scores"]) >= set(row["tags"]) for row in rows)
    assert (tmp_path / "runs" / "tag-a-csv" / "run" / "model" / "model.safetensors").exists()
