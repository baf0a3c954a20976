"""The conversion machinery: typed getters over one TOML table that record problems with paths.

Every getter returns a usable value (the default when the input is wrong) so conversion carries
on and *all* problems are found in one pass.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from klag_pipeline.settings.durations import DurationError, format_duration, parse_duration

T = TypeVar("T")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?"
)


@dataclass(frozen=True, slots=True)
class SettingsWarning:
    """Something accepted but worth telling the operator (a key that does nothing here)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Invalid(ValueError):
    """A value failed conversion; the message is the problem text."""


class Missing:
    pass


MISSING: Final = Missing()


class Context:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[SettingsWarning] = []
        self.env_origin: dict[str, str] = {}

    def problem(self, path: str, message: str) -> None:
        for origin_path, variable in self.env_origin.items():
            if path == origin_path or path.startswith((origin_path + ".", origin_path + "[")):
                message = f"{message} (set by environment variable {variable})"
                break
        self.problems.append((path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(SettingsWarning(path, message))


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    # A quoted key is escaped as TOML writes it, so a key holding a newline or a quote still
    # makes a one-line, unambiguous path.
    shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{shown}" if path else shown


def describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class Section:
    """One TOML table under conversion: typed getters that record problems, then ``finish``."""

    def __init__(
        self, ctx: Context, path: str, data: object, compat: Mapping[str, str] | None = None
    ) -> None:
        self.ctx = ctx
        self.path = path
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.known: list[str] = []
        self.compat = compat or {}

    def at(self, key: str) -> str:
        return join_path(self.path, key)

    def problem(self, key: str, message: str) -> None:
        self.ctx.problem(self.at(key), message)

    def raw(self, key: str) -> object:
        self.known.append(key)
        return self.data.get(key, MISSING)

    def get(self, key: str, default: T, convert: Callable[[object], T]) -> T:
        value = self.raw(key)
        if isinstance(value, Missing):
            return default
        try:
            return convert(value)
        except Invalid as exc:
            self.problem(key, str(exc))
            return default

    def require(self, key: str, convert: Callable[[object], T]) -> T | None:
        if key not in self.data:
            self.known.append(key)
            self.problem(key, "required")
            return None
        return self.get(key, None, convert)

    def table(self, key: str, compat: Mapping[str, str] | None = None) -> Section:
        value = self.raw(key)
        if not isinstance(value, (dict, Missing)):
            self.problem(key, f"must be a table, got {describe(value)}")
        return Section(self.ctx, self.at(key), value, compat)

    def string_map(self, key: str, *, plain_text: bool = False) -> dict[str, str]:
        """A table of scalars; numbers and booleans become their TOML text (``true``, ``10``).

        ``plain_text``: names and values end up in labels or protocol fields, so control
        characters are rejected in both."""
        value = self.raw(key)
        if isinstance(value, Missing):
            return {}
        if not isinstance(value, dict):
            self.problem(key, f"must be a table, got {describe(value)}")
            return {}
        result = {}
        for entry, item in value.items():
            where = join_path(self.at(key), entry)
            if isinstance(item, bool):
                result[entry] = str(item).lower()
            elif isinstance(item, (str, int, float)):
                result[entry] = str(item)
            else:
                self.ctx.problem(where, f"must be a string, got {describe(item)}")
                continue
            if plain_text:
                problem = control_character(entry) or control_character(result[entry])
                if problem is not None:
                    self.ctx.problem(where, problem)
                    del result[entry]
        return result

    def regex_list(
        self, key: str, default: tuple[re.Pattern[str], ...]
    ) -> tuple[re.Pattern[str], ...]:
        value = self.raw(key)
        if isinstance(value, Missing):
            return default
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            self.problem(key, f"must be a regex or an array of regexes, got {describe(value)}")
            return default
        patterns = []
        for index, item in enumerate(items):
            where = join_path(self.at(key), index) if not isinstance(value, str) else self.at(key)
            if not isinstance(item, str):
                self.ctx.problem(where, f"must be a string (a regex), got {describe(item)}")
                continue
            try:
                patterns.append(re.compile(item))
            except re.error as exc:
                self.ctx.problem(where, f"invalid regex {item!r}: {exc}")
        return tuple(patterns)

    def finish(self) -> None:
        for key in self.data:
            if key in self.known:
                continue
            if key in self.compat:
                self.ctx.warn(self.at(key), self.compat[key])
                continue
            candidates = list(dict.fromkeys(self.known + list(self.compat)))
            hint = difflib.get_close_matches(key.lower(), candidates, n=1, cutoff=0.6)
            if hint:
                self.problem(key, f"unknown key; did you mean '{hint[0]}'?")
            else:
                self.problem(key, f"unknown key (known: {', '.join(sorted(candidates))})")


def duration(low: float, high: float) -> Callable[[object], float]:
    """A duration from ``low`` to ``high`` inclusive (every duration has a documented range)."""

    def convert(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except DurationError as exc:
            raise Invalid(str(exc)) from exc
        if not low <= seconds <= high:
            shown = value.strip() if isinstance(value, str) else value
            if isinstance(shown, str) and len(shown) > 40:
                shown = shown[:40] + "…"
            if isinstance(shown, str) and control_character(shown):
                shown = repr(shown)
            raise Invalid(
                f"must be between {format_duration(low)} and {format_duration(high)}, got {shown}"
            )
        return seconds

    return convert


def integer(minimum: int, maximum: int) -> Callable[[object], int]:
    """An integer from ``minimum`` to ``maximum`` inclusive (every count has a documented range)."""

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, got {describe(value)}")
        if not minimum <= value <= maximum:
            raise Invalid(f"must be at least {minimum} and at most {maximum}, got {value}")
        return value

    return convert


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {describe(value)}")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {describe(value)}")
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def control_character(text: str) -> str | None:
    """A description of the first control character in ``text`` (NUL, newline, escape, …), or
    None. Such characters end up in label values, file names and protocol fields, where they
    truncate (NUL), split lines or inject headers."""
    for position, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"must not contain control characters (found {char!r} at position {position})"
    return None


def plain(text: str) -> str:
    """``text`` unchanged, or :class:`Invalid` when it contains a control character."""
    problem = control_character(text)
    if problem is not None:
        raise Invalid(problem)
    return text


def printable(value: object) -> str:
    """A non-empty string without control characters (cluster names, lease names, …)."""
    return plain(string(value))


def optional_printable(value: object) -> str | None:
    """Like :func:`optional_string`, without control characters."""
    text = optional_string(value)
    return None if text is None else plain(text)


def optional_string(value: object) -> str | None:
    """Empty means unset, so ``"${POD_NAMESPACE:-}"`` falls back to the built-in default."""
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {describe(value)}")
    return value or None


def choice(options: tuple[T, ...]) -> Callable[[object], T]:
    """One of ``options`` (pass ``typing.get_args`` of the schema's Literal type)."""

    def convert(value: object) -> T:
        for option in options:
            if value == option:
                return option
        shown = " or ".join(repr(o) for o in options)
        raise Invalid(f"must be {shown}, got {describe(value)}")

    return convert


def host(value: object) -> str:
    text = string(value)
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        if not _HOSTNAME.fullmatch(text):
            raise Invalid(f"must be an IP address or a hostname, got {text!r}") from None
    return text


def port(value: object) -> int:
    return integer(1, 65535)(value)


def url(value: object) -> str:
    text = string(value)
    match = re.fullmatch(r"(https?)://([^/?#]+)([/?#].*)?", text)
    if match is None:
        raise Invalid("must be an http:// or https:// URL such as 'http://localhost:4317'")
    return text


def bootstrap_servers(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = [s.strip() for s in value.split(",")]
    elif isinstance(value, list):
        items = [s.strip() if isinstance(s, str) else s for s in value]
    else:
        raise Invalid(f"must be 'host:port,host:port' or an array of them, got {describe(value)}")
    servers = [s for s in items if s != ""]
    if not servers:
        raise Invalid("must name at least one broker as host:port")
    good: list[str] = []
    bad: list[str] = []
    for server in servers:
        if not isinstance(server, str):
            bad.append(describe(server))
            continue
        hostname, sep, number = server.rpartition(":")
        try:
            host(hostname)
            valid = bool(sep) and number.isdigit() and 1 <= int(number) <= 65535
        except Invalid:
            valid = False
        (good if valid else bad).append(server if valid else repr(server))
    if bad:
        raise Invalid(f"each broker must be host:port (port 1–65535); bad: {', '.join(bad)}")
    return tuple(good)
