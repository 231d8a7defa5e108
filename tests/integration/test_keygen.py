"""`spime-agent keygen`: a private key only its owner can read, a public key the car can load."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.control.envelope import key_id, load_private_key, load_public_key
from tests.support.agentrun import cli


def test_keygen_writes_a_matching_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "fleet.key"
    r = cli("keygen", "--out", str(key))
    assert r.returncode == 0, r.stderr
    pub = tmp_path / "fleet.key.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub.read_bytes()
    private, public = load_private_key(key), load_public_key(pub)
    assert key_id(private.public_key()) == key_id(public)
    assert key_id(public) in r.stdout

    before = key.read_bytes()
    again = cli("keygen", "--out", str(key))
    assert again.returncode == 2 and "--force" in again.stderr
    assert key.read_bytes() == before
    assert cli("keygen", "--out", str(key), "--force").returncode == 0
    assert key.read_bytes() != before


def test_keygen_into_a_missing_folder_names_it(tmp_path: Path) -> None:
    r = cli("keygen", "--out", str(tmp_path / "nowhere" / "k"))
    assert r.returncode == 2 and "nowhere" in r.stderr


def test_command_with_an_unreadable_plan_is_bad_input(tmp_path: Path) -> None:
    # Exit 1 means the car refused: a plan file that cannot be read never reached a car.
    key = tmp_path / "fleet.key"
    assert cli("keygen", "--out", str(key)).returncode == 0
    (tmp_path / "list.json").write_text("[1, 2]")
    base = ["command", "--host", "127.0.0.1", "--port", "1", "--vin", "WVWZZZ1JZXW000001"]
    for name, words in (("missing.json", "cannot read plan"), ("list.json", "JSON object")):
        r = cli(*base, "--key", str(key), "plan", str(tmp_path / name))
        assert r.returncode == 2 and words in r.stderr, r.stderr
