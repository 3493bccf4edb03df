"""TLS material: the self-signed certificate made on first start, and server SSL contexts.

With no certificate configured, momedod generates an ECDSA P-256 certificate in the state
directory. Clients pin the SHA-256 of its DER (delivered in the invite link), so no public CA is
needed. A context is always built fresh and validated before use (reload swaps whole contexts).
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from momedod.protocol.invite import cert_fingerprint

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""OpenSSL cipher string for TLS 1.2 (when enabled): forward-secret AEAD suites only."""


class TLSConfigError(Exception):
    """A certificate or key cannot be used; the message names the files."""


@dataclass(frozen=True)
class TLSMaterial:
    """A validated server context plus what clients pin."""

    context: ssl.SSLContext
    cert_path: Path
    fingerprint: bytes  # SHA-256 of the leaf certificate DER
    not_after: datetime.datetime


def ensure_self_signed(state_dir: Path, hostnames: list[str]) -> tuple[Path, Path]:
    """Return (cert, key) in ``state_dir/tls``, generating them on first use."""
    tls_dir = state_dir / "tls"
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, hostnames[0] if hostnames else socket.gethostname()
            )
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            import ipaddress

            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_key, key_path)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_cert, cert_path)
    return cert_path, key_path


def load_material(cert_path: Path, key_path: Path, min_version: str = "1.3") -> TLSMaterial:
    """Build and validate a server context; raise TLSConfigError naming the problem."""
    try:
        pem = cert_path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"{cert_path}: cannot read certificate: {e.strerror}") from e
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise TLSConfigError(f"{cert_path}: not a PEM certificate") from e
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    # TLS 1.3 suites are all AEAD; for 1.2 keep only ECDHE with AES-GCM or ChaCha20-Poly1305
    # (Python's default list still has CBC suites). No compression (CRIME), no renegotiation.
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except FileNotFoundError as e:
        raise TLSConfigError(f"{e.filename}: no such file") from e
    except PermissionError as e:
        raise TLSConfigError(f"{e.filename}: permission denied") from e
    except ssl.SSLError as e:
        raise TLSConfigError(
            f"{cert_path} / {key_path}: certificate and key do not match or cannot be loaded "
            f"({e.reason or e})"
        ) from e
    der = cert.public_bytes(serialization.Encoding.DER)
    return TLSMaterial(ctx, cert_path, cert_fingerprint(der), cert.not_valid_after_utc)
