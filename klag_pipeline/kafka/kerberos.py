"""GSSAPI credentials from a keytab (``sasl.kerberos.keytab`` / ``sasl.kerberos.principal``).

aiokafka's GSSAPI authenticator uses the process's *default* Kerberos credentials; it has no
per-connection credential argument. librdkafka solves the same problem by running ``kinit`` into
the default credential cache. We do the equivalent in-process with MIT Kerberos: credentials for
the principal are obtained from the keytab into a private in-memory cache that becomes the
process default (``KRB5CCNAME``), and the keytab becomes the client keytab
(``KRB5_CLIENT_KTNAME``) so that the library renews the ticket from it before it expires.

Consequently one process has one Kerberos identity: every GSSAPI cluster of a settings file must
use the same principal and keytab (a second one is refused with an error naming both).
Without a keytab the existing ticket cache (``kinit``, ``KRB5CCNAME``) is used untouched.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from typing import Any, Final

from klag_pipeline.errors import KafkaAuthError

CCACHE: Final = "MEMORY:klag-pipeline"


@dataclass(frozen=True, slots=True)
class KerberosIdentity:
    """Who to be: ``principal`` (None = the keytab's first entry) from ``keytab``."""

    keytab: str
    principal: str | None = None


_lock = threading.Lock()
_active: KerberosIdentity | None = None


def gssapi_module() -> Any:
    """The ``gssapi`` package, or a clear error when the ``kerberos`` extra is not installed."""
    try:
        import gssapi
    except ImportError as exc:
        raise KafkaAuthError(
            "SASL mechanism GSSAPI needs the 'gssapi' package: "
            "pip install 'klag-pipeline[kerberos]' (builds against libkrb5-dev)",
            mechanism="GSSAPI",
        ) from exc
    return gssapi


def _login(identity: KerberosIdentity) -> None:
    global _active
    gssapi = gssapi_module()
    with _lock:
        if _active == identity:
            return
        if _active is not None:
            raise KafkaAuthError(
                f"GSSAPI: this process already uses Kerberos principal "
                f"{_active.principal or '(first in keytab)'} from {_active.keytab}; one process "
                f"has one Kerberos identity, so {identity.principal or '(first in keytab)'} "
                f"from {identity.keytab} cannot be used too",
                mechanism="GSSAPI",
            )
        name = (
            gssapi.Name(identity.principal, gssapi.NameType.kerberos_principal)
            if identity.principal
            else None
        )
        try:
            credentials = gssapi.Credentials(
                name=name,
                usage="initiate",
                store={"client_keytab": identity.keytab, "ccache": CCACHE},
            )
            # Asking for the lifetime makes the library obtain the ticket now, so a wrong
            # keytab or an unreachable KDC is reported here rather than mid-handshake.
            _ = credentials.lifetime
        except gssapi.exceptions.GSSError as exc:
            raise KafkaAuthError(
                f"GSSAPI: cannot obtain Kerberos credentials for "
                f"{identity.principal or '(first principal)'} from keytab {identity.keytab}: "
                f"{exc.gen_message()}",
                mechanism="GSSAPI",
            ) from exc
        os.environ["KRB5CCNAME"] = CCACHE
        os.environ["KRB5_CLIENT_KTNAME"] = identity.keytab
        _active = identity


async def ensure_login(identity: KerberosIdentity) -> None:
    """Make ``identity`` the process's Kerberos credentials (once; talks to the KDC)."""
    if _active == identity:
        return
    await asyncio.to_thread(_login, identity)
