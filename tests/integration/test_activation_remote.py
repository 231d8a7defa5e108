"""`activate --command-key` / `--allow-remote-consent`: the [remote] section is written only for
a key that loads, and the activated config enables commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.control.envelope import generate_key, public_pem
from tests.support.activation import Setup, material, setup  # noqa: F401 (fixtures)


def test_command_key_is_written_as_the_remote_section(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    activation: Setup = request.getfixturevalue("setup")
    key = tmp_path / "fleet.pub"
    key.write_bytes(public_pem(generate_key().public_key()))
    r = activation.run(
        activation.args("--offline", "--allow-remote-consent", f"--command-key={key}")
    )
    assert r.code == 0, r.err
    cfg = load_config(activation.config)
    assert cfg.remote is not None
    assert cfg.remote.command_key == key.absolute() and cfg.remote.allow_remote_consent is True

    # Without --allow-remote-consent, grants stay off (the default).
    r = activation.run(activation.args("--offline", "--force", f"--command-key={key}"))
    assert r.code == 0, r.err
    cfg = load_config(activation.config)
    assert cfg.remote is not None and cfg.remote.allow_remote_consent is False


def test_a_bad_command_key_writes_nothing(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    activation: Setup = request.getfixturevalue("setup")
    bad = tmp_path / "not-a-key.pub"
    bad.write_text("hello\n")
    r = activation.run(activation.args("--offline", f"--command-key={bad}"))
    assert r.code == 2 and "--command-key" in r.err and str(bad) in r.err
    assert not activation.config.exists()
    r = activation.run(activation.args("--offline", "--allow-remote-consent"))
    assert r.code == 2 and "needs --command-key" in r.err
    assert not activation.config.exists()


def test_without_command_key_there_is_no_remote_section(request: pytest.FixtureRequest) -> None:
    activation: Setup = request.getfixturevalue("setup")
    assert activation.run(activation.args("--offline")).code == 0
    assert load_config(activation.config).remote is None
