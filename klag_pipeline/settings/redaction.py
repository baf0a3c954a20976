"""Keeping secrets out of everything a human or a log shipper can read (SPEC §2.1 rule 5).

One walker decides what is secret, so the redacted view (``/``, ``check``), the set of secret
values scrubbed from error messages and the log scrubber never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from klag_pipeline.settings.schema import Settings

MASK = "***"

_SECRET_WORDS = ("password", "secret", "token", "credential")
_SECRET_KEYS = frozenset({"sasl.jaas.config", "ssl.key.pem", "ssl.keystore.key"})
# Every value of these tables is secret whatever its key: OTLP headers carry bearer tokens and
# API keys under arbitrary names, basic_auth_users maps user names to password hashes.
_SECRET_TABLES = frozenset({"headers", "basic_auth_users"})


def is_secret_key(key: str) -> bool:
    """Whether a value stored under ``key`` must never be shown (e.g. ``sasl.password``)."""
    lowered = key.lower()
    return (
        any(word in lowered for word in _SECRET_WORDS)
        or lowered in _SECRET_KEYS
        or lowered.startswith("sasl.oauthbearer.")
    )


def plain_settings(settings: Settings) -> dict[str, Any]:
    """A JSON-able, *unredacted* view of ``settings`` (durations in seconds, regexes as text)."""
    result = _plain(settings)
    assert isinstance(result, dict)
    return result


def redact_settings(settings: Settings) -> dict[str, Any]:
    """A JSON-able view of ``settings`` in which every secret value reads ``***``."""
    redacted, _ = _walk(plain_settings(settings))
    assert isinstance(redacted, dict)
    return redacted


def secret_values(settings: Settings) -> frozenset[str]:
    """Every secret string in ``settings``, for scrubbing them out of free text (logs)."""
    return secret_values_in(plain_settings(settings))


def secret_values_in(tree: object) -> frozenset[str]:
    """Every secret string in a raw settings tree (nested dicts and lists)."""
    _, found = _walk(tree)
    return frozenset(found)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of any of ``secrets`` in ``text`` with ``***``.

    Values shorter than 3 characters are left alone: replacing every "a" in a message would
    make it unreadable while protecting nothing a guess would not find.
    """
    candidates = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)
    if not candidates:
        return text
    return re.sub("|".join(re.escape(s) for s in candidates), MASK, text)


def _plain(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_plain(v) for v in value]
    return value


def _walk(node: object, secret: bool = False) -> tuple[object, list[str]]:
    """Return (redacted copy of ``node``, secret strings found in it)."""
    if isinstance(node, Mapping):
        found: list[str] = []
        out: dict[str, object] = {}
        for key, value in node.items():
            key = str(key)
            child_secret = secret or is_secret_key(key)
            if isinstance(value, Mapping) and key in _SECRET_TABLES:
                out[key], child_found = _walk_secret_table(value)
            else:
                out[key], child_found = _walk(value, child_secret)
            found.extend(child_found)
        return out, found
    if isinstance(node, list):
        found = []
        items = []
        for item in node:
            redacted, child_found = _walk(item, secret)
            items.append(redacted)
            found.extend(child_found)
        return items, found
    if secret and node is not None and not isinstance(node, bool):
        return MASK, [str(node)]
    if isinstance(node, str) and "@" in node and "://" in node:
        return _redact_url(node)
    return node, []


def _walk_secret_table(table: Mapping[Any, Any]) -> tuple[dict[str, object], list[str]]:
    found: list[str] = []
    out: dict[str, object] = {}
    for key, value in table.items():
        out[str(key)], child_found = _walk(value, True)
        found.extend(child_found)
    return out, found


def _redact_url(text: str) -> tuple[str, list[str]]:
    """Mask the password of ``scheme://user:password@host`` URLs (OTLP endpoints)."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text, []
    if not password:
        return text, []
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:{MASK}@{host}"
    return urlunsplit(parts._replace(netloc=netloc)), [password]
