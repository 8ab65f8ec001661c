"""``--ssl_config_file``: TLS on the gRPC ports, read as TF Serving reads it.

TF Serving parses the file as an ``SSLConfig`` text proto (tensorflow_serving/config/
ssl_config.proto: ``server_key`` = 1, ``server_cert`` = 2, ``custom_ca`` = 3, ``client_verify`` =
4; each string field holds PEM text itself, not a path) and builds its gRPC server credentials
from it (model_servers/server.cc, ``BuildServerCredentials``, lines 117-149 at 9d981c5): the key
and certificate as the one key-cert pair, ``custom_ca`` as the roots client certificates are
checked against, and ``client_verify`` as "request and require a client certificate, and verify
it". The same credentials serve the TCP port and the Unix socket (server.cc 376-389).

Where TF Serving crashes on a file it cannot parse (``CHECK_OK``) or fails to build its server on
a bad key, this module checks everything before a port is bound and says what is wrong in one
line (``StartError``): an unreadable or unparsable file, an empty or non-PEM field (a path where
the PEM text belongs is named as such), a key that does not open, a certificate that does not
match its key or is out of its validity dates, a CA that does not parse, and ``client_verify``
without a ``custom_ca`` to verify against.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc

from consumer.serving import textproto

MAX_CONFIG_BYTES = 1 << 20  # an SSLConfig is a key and a few certificates: kilobytes


class StartError(Exception):
    """The gRPC front cannot start as configured; the message is one line for the operator
    (``model_server: error: <message>``, exit 2)."""


SSLConfig = textproto.message_class(
    "tensorflow_serving/config/ssl_config.proto", "tensorflow.serving",
    {"SSLConfig": [("server_key", 1, "string"), ("server_cert", 2, "string"),
                   ("custom_ca", 3, "string"), ("client_verify", 4, "bool")]})


def read_ssl_config(path: Path):
    """The file's ``SSLConfig``; ``StartError`` if it cannot be read or parsed."""
    return textproto.read(path, SSLConfig, f"--ssl_config_file {path}", "an SSLConfig",
                          StartError, MAX_CONFIG_BYTES)


def server_credentials(path: Path) -> tuple[grpc.ServerCredentials, bool]:
    """TF Serving's credentials from ``--ssl_config_file``, each part checked first; and
    whether clients must show a certificate."""
    config = read_ssl_config(path)
    where = f"--ssl_config_file {path}"
    key = _pem(config.server_key, "server_key", where)
    cert = _pem(config.server_cert, "server_cert", where)
    _check_pair(key, cert, where)
    roots = None
    if config.custom_ca:
        roots = _pem(config.custom_ca, "custom_ca", where)
        _certificates(roots, "custom_ca", where)
    if config.client_verify and roots is None:
        raise StartError(f"{where}: client_verify is true and there is no custom_ca to verify "
                         "client certificates against")
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=roots,
                                              require_client_auth=config.client_verify)
    return credentials, config.client_verify


def _pem(text: str, field: str, where: str) -> bytes:
    if not text.strip():
        raise StartError(f"{where}: {field} is empty")
    if "-----BEGIN" not in text:
        hint = " (it holds the PEM text itself, not a file's path)" if \
            "\n" not in text.strip() else ""
        raise StartError(f"{where}: {field} is not PEM{hint}")
    return text.encode()


def _certificates(pem: bytes, field: str, where: str) -> list:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as err:
        raise StartError(f"{where}: {field} holds no certificate that parses: {err}") from None


def _check_pair(key_pem: bytes, cert_pem: bytes, where: str) -> None:
    """The key opens without a password, the certificate is its own, and it is valid now."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:  # TypeError: encrypted, and no password to give
        raise StartError(f"{where}: server_key does not open: {err}") from None
    leaf = _certificates(cert_pem, "server_cert", where)[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise StartError(f"{where}: server_cert is not the certificate of server_key")
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > leaf.not_valid_after_utc:
        raise StartError(f"{where}: server_cert expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if now < leaf.not_valid_before_utc:
        raise StartError(f"{where}: server_cert is not valid before "
                         f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
