"""API key files: named clients with scopes; a file that would leave the service open is refused."""
import pytest

from multimodal_tags.cli import main
from multimodal_tags.service.auth import KeyFileError, KeyRing

GOOD = "a-key-of-sixteen-or-more"


@pytest.mark.parametrize("text, match", [
    ("", "holds no API key"),
    ("   \n\t\n", "holds no API key"),
    ("# only a comment\n", "holds no API key"),
    ("short\n", "at least 16 characters"),
    (f"ann read {GOOD}\nbob read short-key\n", r"keys:2: an API key must have at least 16"),
    (f"ann read,admin {GOOD}\n", "scopes 'read,admin'"),
    (f"ann read {GOOD}\nbob write {GOOD}\n", "given twice"),
    (f"ann read {GOOD} extra\nbob read {GOOD}x\n", "expected `name scopes key`"),
])
def test_bad_key_files_are_refused_naming_the_line(tmp_path, text, match):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=match):
        KeyRing.from_file(path)


def test_a_key_file_names_clients_and_their_scopes(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# name scopes key\nann read,review {GOOD}  # the reviewer\netl write {GOOD}-2\n")
    ring = KeyRing.from_file(path)
    assert ring.client(GOOD).name == "ann" and ring.client(GOOD).scopes == {"read", "review"}
    assert ring.client(f"{GOOD}-2").scopes == {"write"}
    assert ring.client("nope") is None and ring.client(None) is None and ring.client(GOOD[:-1]) is None


def test_the_old_one_key_file_is_one_client_with_every_scope(tmp_path):
    (tmp_path / "key").write_text(f"  {GOOD}\n")
    assert KeyRing.from_file(tmp_path / "key").client(GOOD).scopes == {"read", "write", "review"}


def test_serve_refuses_a_bad_key_file_before_loading_any_model(tmp_path, capsys):
    (tmp_path / "keys").write_text("\n")
    code = main(["serve", "--model", str(tmp_path / "no-model"), "--store", str(tmp_path / "s.db"), "--create",
                 "--api-key-file", str(tmp_path / "keys")])
    assert code != 0 and "holds no API key" in capsys.readouterr().err


def test_serve_refuses_to_be_open_to_the_network_by_accident(tmp_path, capsys):
    code = main(["serve", "--model", str(tmp_path / "no-model"), "--store", str(tmp_path / "s.db"), "--create",
                 "--host", "0.0.0.0"])
    assert code != 0 and "--api-key-file" in capsys.readouterr().err


def test_serve_refuses_a_model_with_no_threads(tmp_path, capsys):
    code = main(["serve", "--model", str(tmp_path / "no-model"), "--store", str(tmp_path / "s.db"), "--create",
                 "--threads", "0"])
    assert code != 0 and "--threads 0" in capsys.readouterr().err
