"""A throw-away test PKI made with ``cryptography``: a CA, server and client certificates.

- :class:`TestPki` writes a CA, a server certificate for ``127.0.0.1``/``localhost``, a client
  certificate, and an unrelated second CA (with its own client certificate) as PEM files.
- :class:`TlsFiles` is what a client needs for TLS (see :meth:`TestPki.tls`).

The session-scoped ``pki`` fixture (in :mod:`broker`) makes one for the whole test session.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TestPki", "TlsFiles"]


@dataclass(frozen=True)
class TlsFiles:
    """What a client needs for TLS: the CA that verifies the broker, optionally its own cert + key."""

    ca_cert: Path
    certfile: Path | None = None
    keyfile: Path | None = None


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-runtime tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_pem(path: Path, data: bytes, mode: int) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    path.chmod(mode)
    return path


class _Ca:
    def __init__(self, common_name: str, not_before: dt.datetime, not_after: dt.datetime) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.not_before = not_before
        self.not_after = not_after

    def issue(
        self, common_name: str, *, server: bool, sans: Sequence[x509.GeneralName] = ()
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


class TestPki:
    """A throw-away PKI in ``directory``: PEM files whose paths are the attributes below.

    - ``ca_cert``/``ca_key``: the test CA (self-signed).
    - ``server_cert``/``server_key``: signed by the CA, SAN ``127.0.0.1`` (IP) and ``localhost`` (DNS).
    - ``client_cert``/``client_key``: a client certificate signed by the CA (CN ``client_name``).
    - ``other_ca_cert``/``other_ca_key``: a second, unrelated CA, for "wrong CA" tests, and
      ``other_client_cert``/``other_client_key``, a client certificate signed by it.

    Keys are EC P-256, unencrypted PKCS#8, file mode 0600.
    """

    __test__ = False  # not a test class, though its name starts with "Test"

    def __init__(self, directory: Path, *, client_name: str = "edge-test-client", days: int = 30) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.client_name = client_name
        now = dt.datetime.now(dt.timezone.utc)
        not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)
        ca = _Ca("edge-runtime test CA", not_before, not_after)
        other = _Ca("unrelated test CA", not_before, not_after)
        server_key, server_cert = ca.issue(
            "localhost",
            server=True,
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        client_key, client_cert = ca.issue(client_name, server=False)
        other_client_key, other_client_cert = other.issue(client_name, server=False)

        self.ca_cert = self._cert("ca.crt", ca.cert)
        self.ca_key = self._key("ca.key", ca.key)
        self.server_cert = self._cert("server.crt", server_cert)
        self.server_key = self._key("server.key", server_key)
        self.client_cert = self._cert("client.crt", client_cert)
        self.client_key = self._key("client.key", client_key)
        self.other_ca_cert = self._cert("other-ca.crt", other.cert)
        self.other_ca_key = self._key("other-ca.key", other.key)
        self.other_client_cert = self._cert("other-client.crt", other_client_cert)
        self.other_client_key = self._key("other-client.key", other_client_key)

    def _cert(self, name: str, cert: x509.Certificate) -> Path:
        return _write_pem(self.directory / name, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _key(self, name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return _write_pem(self.directory / name, data, 0o600)

    def tls(self, *, client_cert: bool = False) -> TlsFiles:
        """Client TLS settings that trust the test CA (and present the client certificate)."""
        if client_cert:
            return TlsFiles(self.ca_cert, self.client_cert, self.client_key)
        return TlsFiles(self.ca_cert)

    def wrong_ca_tls(self) -> TlsFiles:
        """Client TLS settings that trust only the unrelated CA: verifying the broker must fail."""
        return TlsFiles(self.other_ca_cert)
