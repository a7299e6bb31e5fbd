"""Operator mistakes: a mistyped or unusable store path, and event files that are pipes, huge lines,
compressed or not UTF-8, each get one line naming the file and the cause; nothing hangs."""
import gzip
import json
import os

import pytest

from multimodal_tags.cli import main
from multimodal_tags.feedback.events import MAX_EVENT_LINE_BYTES, read_events
from multimodal_tags.tagging.tag_store import StoreError, TagStore, check_store


def _unusable_stores(tmp_path):
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "garbage.db").write_bytes(b"this is not a database at all, not even close")
    os.mkfifo(tmp_path / "fifo.db")
    return {"no-such.db": "no tag store there", "folder.db": "is a folder", "garbage.db": "not a SQLite database",
            "fifo.db": "not a regular file"}


def test_unusable_store_paths_are_refused_in_one_line(tmp_path):
    for name, cause in _unusable_stores(tmp_path).items():
        with pytest.raises(StoreError, match=cause):
            check_store(tmp_path / name)
    assert check_store(tmp_path / "new.db", create=True) == tmp_path / "new.db"
    with pytest.raises(StoreError, match="missing or not writable"):
        check_store(tmp_path / "no-folder" / "new.db", create=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_store_is_refused(tmp_path):
    TagStore(tmp_path / "s.db").close()
    os.chmod(tmp_path / "s.db", 0o444)
    with pytest.raises(StoreError, match="not writable"):
        check_store(tmp_path / "s.db")


@pytest.mark.parametrize("command", [
    ["feedback", "import", "EVENTS"], ["interactions", "import", "EVENTS"], ["feedback", "stats"],
    ["tags", "p1"], ["recommend", "--user", "ann"],
    ["adapt", "--model", "NO-MODEL", "--out", "OUT"], ["serve", "--model", "NO-MODEL"]])
def test_commands_refuse_a_mistyped_store_and_create_nothing(tmp_path, capsys, command):
    (tmp_path / "events.jsonl").write_text("")
    argv = [str(tmp_path / "events.jsonl") if a == "EVENTS" else str(tmp_path / a) if a in ("NO-MODEL", "OUT") else a
            for a in command]
    assert main(argv + ["--store", str(tmp_path / "typo.db")]) != 0
    assert "no tag store there" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()


def test_event_files_long_lines_bad_bytes_gzip_and_damage_are_reported_by_row(tmp_path):
    good = json.dumps({"event_id": "1", "user": "u", "product": "p", "tag": "t", "action": "add"})
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(good.encode() + b"\n" + b"x" * (MAX_EVENT_LINE_BYTES + 10) + b"\n" + b'{"user": "\xe9"}\n' + good.encode())
    rows = list(read_events(path))
    assert rows[0][1].event_id == "1" and rows[3][1].event_id == "1"
    assert rows[1] == (2, None, f"longer than {MAX_EVENT_LINE_BYTES:,} bytes (skipped)")
    assert rows[2] == (3, None, "not UTF-8: byte 0xe9 at column 11")
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(path.read_bytes()[:-20])
    assert list(read_events(damaged))[-1][2].startswith("file: damaged from here on")


def test_an_event_file_that_is_a_pipe_is_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "events.jsonl")
    with pytest.raises(ValueError, match="not a regular file"):
        list(read_events(tmp_path / "events.jsonl"))
