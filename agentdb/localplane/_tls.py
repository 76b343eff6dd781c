"""The local plane's own certificate authority, for the connection proxy's TLS.

On first start the plane makes a CA and a server certificate it signs for the names the proxy
answers to (`localhost`, `*.localhost`, the loopback addresses and the proxy's host), and keeps
them under the data directory. Clients that verify (`sslmode=verify-full`) are given the CA's
path; `sslmode=require` works without it, as on Neon. The server certificate is RSA with SHA-256
so every client computes the same `tls-server-end-point` channel binding (SCRAM-SHA-256-PLUS).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = dt.timedelta(days=3650)
_KEY_BITS = 2048


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the CA's certificate and the proxy's certificate and key are."""

    ca_cert: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """A server context over the proxy's certificate: TLS 1.2 at least, no client certs."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context

    def end_point_hash(self) -> bytes:
        """RFC 5929's `tls-server-end-point` data: the SHA-256 of the server certificate."""
        der = x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        return hashlib.sha256(der).digest()


def ensure(directory: Path, hosts: list[str]) -> TlsFiles:
    """The CA and server certificate under `directory`, made on first use. A server
    certificate that does not name every host in `hosts` (the proxy moved) is made again,
    signed by the same CA, so clients that trust the CA keep trusting the proxy."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "proxy.crt", directory / "proxy.key")
    ca_key_path = directory / "ca.key"
    if not files.ca_cert.exists() or not ca_key_path.exists():
        ca_key = _new_key()
        _write_key(ca_key_path, ca_key)
        files.ca_cert.write_bytes(_ca_certificate(ca_key).public_bytes(serialization.Encoding.PEM))
    wanted = _names(hosts)
    if files.cert.exists() and files.key.exists() and _names_in(files.cert) >= wanted:
        return files
    loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise TypeError(f"{ca_key_path} is not the RSA key this plane made")
    ca_key = loaded
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = _new_key()
    _write_key(files.key, key)
    cert = _server_certificate(key, ca_key, ca_cert, wanted)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)


def _ca_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentdb local plane CA")])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: rsa.RSAPrivateKey,
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    names: set[str],
) -> x509.Certificate:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    alternatives: list[x509.GeneralName] = []
    for name in sorted(names):
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _VALID)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _names(hosts: list[str]) -> set[str]:
    names = {"localhost", "*.localhost", "127.0.0.1", "::1"}
    for host in hosts:
        names.add(host)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.add(f"*.{host}")  # endpoint host names: ep-xxx.<host>
    return names


def _names_in(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    dns = extension.value.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in extension.value.get_values_for_type(x509.IPAddress)]
    return {*dns, *ips}
