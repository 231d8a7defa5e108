"""The set-up of the `spime-agent activate` tests: an integrator's base config for the demo
vehicle, TLS material (good, expired, signed by an unknown CA, not a certificate) made with the
openssl CLI, and ``run_activate`` called in this process with the options of a valid activation,
any of which a test can override or leave out.

It only prepares and runs activations; what they must write or refuse is for the tests to say.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.activation import add_arguments, run_activate
from tests.support.broker import TlsFiles, free_port, make_tls_material, openssl
from tests.support.data import DEMO_DBC

VIN = "1M8GDM9AXKP042788"

BASE = f"""
[[bus]]
name = "powertrain"
interface = "virtual"
channel = "activation-test"
dbc = ["{DEMO_DBC}"]

[[signal]]
match = "*.*"

[mqtt]
topic_prefix = "spime/v1"

[outbox]
path = "outbox.db"

[consent]
coarse_grid = 0.05

[[consent.rules]]
match = "GNSS_*.*"
category = "location"

[[consent.rules]]
match = "ESP_*.*"
category = "driving"

[[consent.rules]]
match = "*.*"
category = "vehicle_health"
"""


def _signed(d: Path, name: str, ca_crt: Path, ca_key: Path, dates: tuple[str, str]) -> Path:
    """A client certificate signed with ``openssl ca``, which can set any validity period."""
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = index.txt\n"
        "new_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\n"
        "unique_subject = no\n[any]\ncommonName = supplied\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", ca_crt, "-keyfile", ca_key, "-in",
             f"{name}.csr", "-out", f"{name}.crt", "-startdate", dates[0], "-enddate", dates[1],
             "-notext", cwd=d)  # fmt: skip
    return d / f"{name}.crt"


@dataclass(frozen=True)
class Material:
    tls: TlsFiles
    expired_cert: Path
    expired_key: Path
    rogue_cert: Path  # valid dates, signed by a CA the broker does not know
    rogue_key: Path
    garbage: Path


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    root = tmp_path_factory.mktemp("tls")
    tls = make_tls_material(root / "good")
    exp = root / "expired"
    exp.mkdir()
    expired = _signed(
        exp, "old", tls.ca, tls.ca.with_suffix(".key"), ("20190101000000Z", "20200101000000Z")
    )
    rogue_dir = root / "rogue"
    rogue_dir.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rca.key", "-out",
             "rca.crt", "-days", "2", "-subj", "/CN=rogue-ca", cwd=rogue_dir)  # fmt: skip
    rogue = _signed(rogue_dir, "rogue", rogue_dir / "rca.crt", rogue_dir / "rca.key",
                    ("20240101000000Z", "20990101000000Z"))  # fmt: skip
    garbage = root / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return Material(tls, expired, exp / "old.key", rogue, rogue_dir / "rogue.key", garbage)


@dataclass
class Setup:
    base: Path
    etc: Path
    material: Material

    @property
    def config(self) -> Path:
        return self.etc / "agent.toml"

    def args(self, *extra: str, **override: Any) -> list[str]:
        t = self.material.tls
        values = {
            "vin": VIN,
            "host": "127.0.0.1",
            "port": str(free_port()),  # nothing listens: the broker check only notes it
            "ca": str(t.ca),
            "cert": str(t.client_cert),
            "key": str(t.client_key),
            "consent": "driving,vehicle_health",
            "base": str(self.base),
            "config": str(self.config),
        }
        values.update({k: str(v) for k, v in override.items()})
        argv = [f"--{k}={v}" for k, v in values.items() if v != "None"]
        return argv + list(extra)

    def run(self, argv: list[str], tty: bool = False) -> Result:
        p = argparse.ArgumentParser()
        add_arguments(p)
        out, err = io.StringIO(), io.StringIO()
        code = run_activate(p.parse_args(argv), out, err, tty)
        return Result(code, out.getvalue(), err.getvalue())

    def files(self) -> list[str]:
        return sorted(p.name for p in self.etc.iterdir())


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def setup(tmp_path: Path, material: Material) -> Setup:
    base = tmp_path / "integrator" / "base.toml"
    base.parent.mkdir()
    base.write_text(BASE)
    etc = tmp_path / "etc"
    etc.mkdir()
    return Setup(base, etc, material)
