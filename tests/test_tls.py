"""TLS and mTLS handshakes over real gRPC, with certificates made here."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import pathlib
from collections.abc import Iterator

import pytest
import redis
from budgetd.embedded import EmbeddedRedis
from budgetd.server import ServerThread
from budgetd_client import BudgetClient, BudgetUnavailable, CallPolicy
from budgetd_client.cli import main as budgetctl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ops_support import start

POLICY = CallPolicy(timeout_s=5, total_timeout_s=5, retries=0)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool,
          server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    def __init__(self, d: pathlib.Path) -> None:
        ca_key = _key()
        self.ca = _cert("test-ca", ca_key, None, ca_key, ca=True)
        srv_key = _key()
        srv = _cert("localhost", srv_key, self.ca, ca_key, ca=False, server=True)
        cli_key = _key()
        cli = _cert("client", cli_key, self.ca, ca_key, ca=False)
        other_ca_key = _key()
        other_ca = _cert("other-ca", other_ca_key, None, other_ca_key, ca=True)
        rogue_key = _key()
        rogue = _cert("rogue", rogue_key, other_ca, other_ca_key, ca=False)
        self.files: dict[str, pathlib.Path] = {}
        for name, data in (("ca", self.ca.public_bytes(serialization.Encoding.PEM)),
                           ("server.crt", srv.public_bytes(serialization.Encoding.PEM)),
                           ("server.key", _pem_key(srv_key)),
                           ("client.crt", cli.public_bytes(serialization.Encoding.PEM)),
                           ("client.key", _pem_key(cli_key)),
                           ("rogue.crt", rogue.public_bytes(serialization.Encoding.PEM)),
                           ("rogue.key", _pem_key(rogue_key))):
            p = d / name
            p.write_bytes(data)
            self.files[name] = p

    def read(self, name: str) -> bytes:
        return self.files[name].read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def tls_server(pki: Pki, redis_server: EmbeddedRedis, r: redis.Redis) -> Iterator[ServerThread]:
    t = start(redis_server.url, tls_cert_file=str(pki.files["server.crt"]),
              tls_key_file=str(pki.files["server.key"]))
    yield t
    t.stop()


@pytest.fixture()
def mtls_server(pki: Pki, redis_server: EmbeddedRedis,
                r: redis.Redis) -> Iterator[ServerThread]:
    t = start(redis_server.url, tls_cert_file=str(pki.files["server.crt"]),
              tls_key_file=str(pki.files["server.key"]),
              tls_client_ca_file=str(pki.files["ca"]))
    yield t
    t.stop()


def _addr(t: ServerThread) -> str:
    return f"localhost:{t.app.port}"


def test_tls_handshake_and_plaintext_refused(tls_server: ServerThread, pki: Pki) -> None:
    with BudgetClient(_addr(tls_server), root_certificates=pki.read("ca"),
                      policy=POLICY) as c:
        assert c.get_budget("acme").scope.org == "acme"
    with BudgetClient(_addr(tls_server), policy=POLICY) as plain, \
            pytest.raises(BudgetUnavailable):
        plain.get_budget("acme")
    # A client that does not trust the server's CA fails the handshake.
    with BudgetClient(_addr(tls_server), root_certificates=pki.read("rogue.crt"),
                      policy=POLICY) as wrong, pytest.raises(BudgetUnavailable):
        wrong.get_budget("acme")


def test_mtls_requires_a_client_certificate_from_the_ca(mtls_server: ServerThread,
                                                        pki: Pki) -> None:
    with BudgetClient(_addr(mtls_server), root_certificates=pki.read("ca"),
                      private_key=pki.read("client.key"),
                      certificate_chain=pki.read("client.crt"), policy=POLICY) as c:
        assert c.get_budget("acme").scope.org == "acme"
    with BudgetClient(_addr(mtls_server), root_certificates=pki.read("ca"),
                      policy=POLICY) as no_cert, pytest.raises(BudgetUnavailable):
        no_cert.get_budget("acme")
    with BudgetClient(_addr(mtls_server), root_certificates=pki.read("ca"),
                      private_key=pki.read("rogue.key"),
                      certificate_chain=pki.read("rogue.crt"), policy=POLICY) as rogue, \
            pytest.raises(BudgetUnavailable):
        rogue.get_budget("acme")


def test_budgetctl_over_mtls(mtls_server: ServerThread, pki: Pki) -> None:
    base = ["--server", _addr(mtls_server), "--timeout", "5", "--ca-file",
            str(pki.files["ca"])]
    out, err = io.StringIO(), io.StringIO()
    code = budgetctl([*base, "--cert-file", str(pki.files["client.crt"]), "--key-file",
                      str(pki.files["client.key"]), "orgs", "get", "acme"], out=out, err=err)
    assert code == 0, err.getvalue()
    assert "acme" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert budgetctl([*base, "orgs", "get", "acme"], out=out, err=err) == 3


def test_bad_tls_config_refuses_to_start(pki: Pki, tmp_path: pathlib.Path) -> None:
    from budgetd.auth import ConfigError
    from budgetd.tls import server_credentials

    with pytest.raises(ConfigError, match="both"):
        server_credentials(str(pki.files["server.crt"]), "")
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM"):
        server_credentials(str(not_pem), str(pki.files["server.key"]))
    with pytest.raises(ConfigError, match="needs --tls-cert-file"):
        server_credentials("", "", str(pki.files["ca"]))
