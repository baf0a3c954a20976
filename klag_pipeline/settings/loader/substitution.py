"""``${NAME}`` substitution on the raw settings text, before TOML parsing (SPEC §2.1 rule 1).

Forms: ``${NAME}`` (unset → error naming the variable and line), ``${NAME:-default}`` (default
when unset or empty, as in the shell), ``${?NAME}`` (empty when unset; klag-exporter's optional
form) and ``$${NAME}`` (the literal text ``${NAME}``).

The text is scanned with just enough TOML awareness to know where a reference sits:
- in a comment it is left alone, so a commented-out ``"sasl.password" = "${KAFKA_PASSWORD}"``
  line does not demand the variable;
- inside a ``"..."`` string the value is escaped, so a password containing ``"`` or ``\\`` ends
  up in the setting byte for byte instead of breaking (or silently changing) the TOML;
- inside a ``'...'`` literal string nothing can be escaped, so a value that would end the string
  is an error;
- anywhere else (``http_port = ${PORT}``) the value is inserted as TOML text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_REFERENCE = re.compile(r"\$(\$)?\{(\?)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_CODE, _BASIC, _LITERAL, _COMMENT = "code", "basic", "literal", "comment"


def substitute(
    text: str, environ: Mapping[str, str], source: str
) -> tuple[str, list[tuple[str, str]]]:
    """Return ``text`` with every reference replaced, and the problems found (``source:line``)."""
    problems: list[tuple[str, str]] = []
    out: list[str] = []
    line = 1
    for kind, segment in _segments(text):
        if kind == _COMMENT or "$" not in segment:
            out.append(segment)
        else:
            out.append(_substitute_segment(segment, kind, environ, source, line, problems))
        line += segment.count("\n")
    return "".join(out), problems


def _substitute_segment(
    segment: str,
    kind: str,
    environ: Mapping[str, str],
    source: str,
    first_line: int,
    problems: list[tuple[str, str]],
) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped, optional, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        where = f"{source}:{first_line + segment.count(chr(10), 0, match.start())}"
        value = environ.get(name)
        if default is not None and not value:
            value = default
        if value is None:
            if optional:
                return ""
            problems.append(
                (
                    where,
                    f"environment variable {name} is not set (write ${{{name}:-default}} "
                    "to give it a default)",
                )
            )
            return ""
        if kind == _BASIC:
            return _escape_basic(value)
        if kind == _LITERAL and ("'" in value or "\n" in value):
            problems.append(
                (
                    where,
                    f"the value of {name} contains a quote or newline and cannot be placed "
                    "in a '...' string; use a \"...\" string instead",
                )
            )
            return ""
        return value

    return _REFERENCE.sub(replace, segment)


def _escape_basic(value: str) -> str:
    out = []
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def _segments(text: str) -> list[tuple[str, str]]:
    """Split TOML text into code, string-content and comment runs (delimiters count as code)."""
    segments: list[tuple[str, str]] = []
    start = i = 0
    n = len(text)

    def flush(kind: str, end: int) -> None:
        if end > start:
            segments.append((kind, text[start:end]))

    while i < n:
        char = text[i]
        if char == "#":
            flush(_CODE, i)
            start = i
            end = text.find("\n", i)
            i = n if end < 0 else end
            flush(_COMMENT, i)
            start = i
            continue
        if char in "\"'":
            kind = _BASIC if char == '"' else _LITERAL
            delimiter = char * 3 if text.startswith(char * 3, i) else char
            i += len(delimiter)
            flush(_CODE, i)
            start = i
            i = _string_end(text, i, delimiter, escapes=kind == _BASIC)
            flush(kind, i)
            start = i
            i += len(delimiter) if text.startswith(delimiter, i) else 0
            continue
        i += 1
    flush(_CODE, n)
    return segments


def _string_end(text: str, i: int, delimiter: str, *, escapes: bool) -> int:
    """Index of the closing delimiter (or where an unterminated string gives up)."""
    multiline = len(delimiter) == 3
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
            continue
        if text.startswith(delimiter, i) or (not multiline and text[i] == "\n"):
            return i
        i += 1
    return len(text)
