"""``KLAG_`` environment overrides (SPEC §2.1 rule 2), the one place dynaconf is used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from klag_pipeline.settings.loader.sections import Context, join_path

ENV_PREFIX: Final = "KLAG_"
ENV_SEPARATOR: Final = "__"
# Tables whose keys are user data (label names, property names, header names): matched exactly,
# never case-folded, when an environment override addresses them.
_USER_TABLES: Final = frozenset(
    {"labels", "consumer_properties", "headers", "resource_attributes", "basic_auth_users"}
)


def apply_env_overrides(tree: dict[str, Any], environ: Mapping[str, str], ctx: Context) -> None:
    """Merge ``KLAG_EXPORTER__HTTP_PORT=9000``-style variables into ``tree``.

    Values are parsed by dynaconf exactly as its own env loader does (TOML literals, ``@int``,
    ``@json``, ``@merge`` …). Segments are matched case-insensitively to existing keys, except
    inside user tables (labels, consumer_properties, …) where case is data. A numeric segment
    indexes a list (``KLAG_CLUSTERS__0__BOOTSTRAP_SERVERS``); the index one past the end appends.
    Variables whose first segment is not ``EXPORTER`` or ``CLUSTERS`` are not settings (e.g.
    ``KLAG_TEST_BOOTSTRAP``) and are skipped; with a ``__`` in the name they draw a warning.
    """
    names = sorted(n for n in environ if n.startswith(ENV_PREFIX) and len(n) > len(ENV_PREFIX))
    if not names:
        return
    # Imported here: dynaconf costs ~100 ms to import and most runs have no overrides.
    from dynaconf import Dynaconf
    from dynaconf.utils.parse_conf import (
        DynaconfParseError,
        MetaValue,
        boolean_fix,
        parse_conf_data,
    )

    box = Dynaconf(environments=False, envvar_prefix=None, settings_files=[], load_dotenv=False)
    for name in names:
        segments = name[len(ENV_PREFIX) :].split(ENV_SEPARATOR)
        if segments[0].lower() not in ("exporter", "clusters"):
            if len(segments) > 1:
                ctx.warn(name, "not a settings override (sections: EXPORTER, CLUSTERS); ignored")
            continue
        if any(not s for s in segments):
            ctx.problem(name, "malformed override name (empty segment between '__')")
            continue
        try:
            value = parse_conf_data(boolean_fix(environ[name]), tomlfy=True, box_settings=box)
        except DynaconfParseError as exc:
            ctx.problem(name, f"invalid value: {exc}")
            continue
        merge = isinstance(value, MetaValue) and getattr(value, "_dynaconf_merge", False)
        if merge:
            value = value.unwrap()
        elif isinstance(value, MetaValue) or type(value).__name__ == "Lazy":
            ctx.problem(name, "dynaconf tokens other than @merge are not supported in overrides")
            continue
        _set_override(tree, segments, _plain(value), merge, name, ctx)


def _set_override(
    tree: dict[str, Any], segments: list[str], value: object, merge: bool, name: str, ctx: Context
) -> None:
    container: Any = tree
    path = ""
    parent = ""
    for position, segment in enumerate(segments):
        key: str | int
        if isinstance(container, list):
            if not segment.isdigit():
                ctx.problem(name, f"'{segment}' must be a list index (e.g. CLUSTERS__0__NAME)")
                return
            key = int(segment)
            if key > len(container):
                ctx.problem(name, f"index {key} is out of range: {path} has {len(container)}")
                return
            if key == len(container):
                container.append({})
        elif isinstance(container, dict):
            key = segment if parent in _USER_TABLES else _match_key(container, segment)
        else:
            ctx.problem(name, f"{path} is not a table, so '{segment}' cannot be set inside it")
            return
        path = join_path(path, key)
        existing = container[key] if isinstance(key, int) else container.get(key)
        if position == len(segments) - 1:
            if merge and isinstance(existing, dict) and isinstance(value, dict):
                value = {**existing, **value}
            elif merge and isinstance(existing, list) and isinstance(value, list):
                value = existing + value
            container[key] = value
            ctx.env_origin[path] = name
            return
        if existing is None:
            existing = [] if segments[position + 1].isdigit() else {}
            container[key] = existing
        container = existing
        parent = str(key).lower()


def _match_key(table: dict[str, Any], segment: str) -> str:
    for key in table:
        if key.lower() == segment.lower():
            return key
    return segment.lower()


def _plain(value: object) -> object:
    """dynaconf's Box containers → plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
