"""Whether a configured file can be used, in words an operator can act on.

Each function returns None when the file is usable, else a reason such as ``no such file or
directory`` or ``is a directory``; callers put the setting's dotted path and the file name in
front. Checks open the file the way the process will (not ``os.access``, which answers for the
real rather than the effective user and says nothing about directories or FIFOs).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    if exc.errno == errno.EISDIR:
        return "is a directory"
    return (exc.strerror or str(exc)).lower()


def unreadable(path: str) -> str | None:
    """None when ``path`` is a regular file this process can read, else why not."""
    if "\0" in path:
        return "the path contains a NUL character"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return _reason(exc)
    try:
        mode = os.fstat(descriptor).st_mode
    finally:
        os.close(descriptor)
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def unwritable(path: str, *, renames: bool) -> str | None:
    """None when the process can append to ``path`` (creating it and any missing parent
    directories, as the JSON-lines sink does), else why not. ``renames``: the file is also
    rotated, so its directory must be writable even when the file exists."""
    if "\0" in path:
        return "the path contains a NUL character"
    target = Path(path)
    try:
        if target.is_dir():
            return "is a directory"
        exists = target.exists()
        if exists and not os.access(target, os.W_OK):
            return "the file is not writable"
        # The nearest existing ancestor decides whether the file (and the directories the sink
        # creates on the way) can be created.
        parent = target.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            return f"{parent} is not a directory"
        if (renames or not exists) and not os.access(parent, os.W_OK | os.X_OK):
            return f"cannot create files in {parent}: permission denied"
    except OSError as exc:
        return _reason(exc)
    return None


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 20)
    except (OSError, ValueError):
        return b""


def tls_pair_failure(cert: str, key: str | None, exc: Exception, *, password: bool) -> str:
    """Why a certificate/key pair did not load, in words: OpenSSL's own text is often just
    ``[SSL] PEM lib``. ``key`` None: the key is expected in the certificate file."""
    key_text = _head(key) if key is not None else _head(cert)
    key_name = key if key is not None else cert
    if b"-----BEGIN" not in _head(cert) or b"CERTIFICATE-----" not in _head(cert):
        return f"no PEM certificate in {cert}"
    if b"PRIVATE KEY-----" not in key_text:
        return f"no PEM private key in {key_name}"
    if b"ENCRYPTED" in key_text:
        return (
            f"cannot decrypt the key {key_name}: wrong password"
            if password
            else f"the key {key_name} is encrypted and no password is configured"
        )
    return f"{cert} and {key_name} do not load as a certificate and its key: {exc}"
