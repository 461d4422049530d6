"""Server TLS credentials from PEM files; a client CA file turns on mTLS."""

from __future__ import annotations

import pathlib

import grpc

from budgetd.auth import ConfigError

MAX_PEM_BYTES = 1 << 20


def _read(flag: str, path: str) -> bytes:
    p = pathlib.Path(path)
    try:
        if p.stat().st_size > MAX_PEM_BYTES:
            raise ConfigError(f"{flag} {path}: larger than {MAX_PEM_BYTES} bytes")
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read: {e.strerror}") from e
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{flag} {path}: not a PEM file")
    return data


def server_credentials(cert_file: str, key_file: str,
                       client_ca_file: str = "") -> grpc.ServerCredentials | None:
    """None when TLS is off (no cert and no key)."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise ConfigError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        return None
    if not cert_file or not key_file:
        raise ConfigError("TLS needs both --tls-cert-file and --tls-key-file")
    cert = _read("--tls-cert-file", cert_file)
    key = _read("--tls-key-file", key_file)
    ca = _read("--tls-client-ca-file", client_ca_file) if client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)
