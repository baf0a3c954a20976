"""The client TLS context from librdkafka-style ``ssl.*`` properties (SPEC §2.2).

Every problem names the property and its file, never the key password; the files are checked
before OpenSSL sees them, so a missing file is "no such file" rather than an SSL error.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Final

from klag_pipeline.settings.paths import tls_pair_failure, unreadable

_SSL_FILES: Final = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location")


def ssl_context(
    properties: Mapping[str, str], problems: list[tuple[str, str]]
) -> ssl.SSLContext | None:
    """The client TLS context; every problem names the property and its file, never the key
    password."""
    files = {key: properties.get(key) or None for key in _SSL_FILES}
    unusable = False
    for key, path in files.items():
        reason = unreadable(path) if path is not None else None
        if reason is not None:
            problems.append((key, f"cannot read {path}: {reason}"))
            unusable = True
    ca, cert, key_file = files.values()
    if key_file is not None and cert is None:
        problems.append(("ssl.key.location", "needs ssl.certificate.location"))
        unusable = True
    if unusable:
        return None
    try:
        # What aiokafka's create_ssl_context does, without its log lines.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError, ValueError) as exc:
        problems.append(("ssl.ca.location", f"cannot load CA certificates from {ca}: {exc}"))
        return None
    if cert is not None:
        # Without a password OpenSSL would prompt on the terminal for an encrypted key; an
        # empty one makes that a load error instead.
        configured = properties.get("ssl.key.password")
        try:
            context.load_cert_chain(cert, key_file, configured or (lambda: b""))
        except (OSError, ssl.SSLError, ValueError) as exc:
            where = "ssl.certificate.location" if key_file is None else "ssl.key.location"
            reason = tls_pair_failure(cert, key_file, exc, password=bool(configured))
            problems.append((where, f"cannot load the client certificate: {reason}"))
            return None
    algorithm = properties.get("ssl.endpoint.identification.algorithm", "https").strip().lower()
    if algorithm in ("", "none"):
        context.check_hostname = False
    elif algorithm != "https":
        problems.append(("ssl.endpoint.identification.algorithm", "must be https or none"))
    return context
