"""Property: whatever the settings file, ``check`` exits 0, or exits 2 listing ``dotted.path:
message`` lines (never a traceback, never another code), and agrees with ``run``'s start-up
validation (:func:`klag_pipeline.startup.load`, the function ``run`` calls before starting).

Generated files mix valid and invalid durations (huge, negative, zero, unitless), counts,
control characters, paths to missing files, directories and unusable TLS files, unknown keys and
values of the wrong type. Derandomized and bounded, so CI sees the same examples every run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from devtools.kafka_local import generate_tls_files
from klag_pipeline.cli import run_command
from klag_pipeline.errors import ConfigError
from klag_pipeline.startup import load as load_for_startup

# One problem per line: a dotted path (plain segments, [index], "quoted keys" with escapes)
# or the settings file's own name, then ": " and a message.
PROBLEM_LINE = re.compile(r'^(?:[^\s"]|"(?:[^"\\]|\\.)*")+: \S.*$')

# --- strategies ----------------------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # surrogates cannot be UTF-8
    max_size=8,
)
_UNITS = ("ms", "s", "m", "h", "d", "w", "ns", "parsecs", "")


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """Valid three times in four: a file with one bad value among good ones is the common case,
    and only a file that passes reaches the summary ``check`` prints."""
    return st.integers(0, 3).flatmap(lambda n: invalid if n == 0 else valid)


DURATIONS = mostly(
    st.sampled_from(["30s", "1m", "500ms", "2s", "1h", "1m 30s"]),
    st.one_of(
        st.builds(
            lambda n, unit: f"{n}{unit}",
            st.integers(0, 10**30) | st.sampled_from([1, 30, 100, 500]),
            st.sampled_from(_UNITS),
        ),
        st.sampled_from(["-5s", "0s", "1ms", "99999999999999999999999999w", "9" * 400 + "s"]),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        _TEXT,
        st.booleans(),
    ),
)
_BAD_COUNTS = st.one_of(
    st.integers(-10, 2000),
    st.integers(-(10**30), 10**30),
    st.sampled_from([100_000_000_000, 0, 1023]),
    st.floats(allow_nan=True),
    _TEXT,
    st.booleans(),
)
COUNTS = mostly(st.integers(1, 1000), _BAD_COUNTS)
BYTES = mostly(st.sampled_from([1024, 262144, 1048576]), _BAD_COUNTS)
# Tokens replaced by real paths under the test's directory (see _resolve).
PATHS = mostly(
    st.sampled_from(["@ca", "@cert", "@key", "@creatable", "-"]),
    st.sampled_from(["@garbage", "@dir", "@missing", "@under_file", "@nul", 7]),
)
NAMES = mostly(
    st.sampled_from(["prod", "a b", "é", "team-1"]),
    st.one_of(st.sampled_from(["x\x00y", "tab\there", "", "line\nbreak"]), _TEXT),
)
ANY_VALUE = st.one_of(
    st.integers(-5, 5), st.booleans(), _TEXT, st.lists(st.integers(), max_size=2), st.just({})
)


def _maybe_unknown(tables: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Sometimes add a key the schema does not know (or a known key with a wrong type)."""
    extra = st.dictionaries(
        st.sampled_from(["pol_interval", "bogus", "enabled", "path", "a\nb"]), ANY_VALUE, max_size=1
    )
    return st.builds(lambda table, more: {**table, **more}, tables, extra)


def _table(**optional: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return mostly(
        st.fixed_dictionaries({}, optional=optional),
        _maybe_unknown(st.fixed_dictionaries({}, optional=optional)),
    )


EXPORTER = _table(
    poll_interval=DURATIONS,
    staleness_threshold=DURATIONS,
    http_port=COUNTS,
    timestamp_sampling=_table(
        cache_ttl=DURATIONS,
        max_concurrent_fetches=COUNTS,
        fetch_timeout=DURATIONS,
        max_bytes_per_partition=BYTES,
    ),
    jsonl=_table(enabled=st.booleans(), path=PATHS, rotate_bytes=BYTES, keep_files=COUNTS),
    http=_table(tls_cert_file=PATHS, tls_key_file=PATHS),
    otel=_table(
        enabled=st.booleans(),
        endpoint=st.sampled_from(["https://127.0.0.1:4317", "http://127.0.0.1:4318", "x"]),
        certificate_file=PATHS,
        export_interval=DURATIONS,
        timeout=DURATIONS,
        headers=st.dictionaries(NAMES, NAMES, max_size=2),
    ),
    performance=_table(
        kafka_timeout=DURATIONS,
        offset_fetch_timeout=DURATIONS,
        max_concurrent_groups=COUNTS,
        max_concurrent_watermarks=COUNTS,
        queue_capacity=COUNTS,
    ),
    leadership=_table(
        enabled=st.booleans(),
        provider=st.sampled_from(["kafka", "kubernetes"]),
        lease_name=NAMES,
        lease_duration=DURATIONS,
        renew_deadline=DURATIONS,
        retry_period=DURATIONS,
        kubeconfig=PATHS,
    ),
)
CONSUMER_PROPERTIES = st.fixed_dictionaries(
    {"security.protocol": mostly(st.sampled_from(["SSL", "PLAINTEXT"]), st.just("TLS"))},
    optional={
        "ssl.ca.location": PATHS,
        "ssl.certificate.location": PATHS,
        "ssl.key.location": PATHS,
        "client.id": NAMES,
        "request.timeout.ms": st.sampled_from(["1000", "-1", "soon"]),
    },
)
CLUSTER = mostly(
    st.fixed_dictionaries(
        {
            "name": NAMES,
            "bootstrap_servers": mostly(
                st.sampled_from(["127.0.0.1:9", "h:1", "[::1]:9092"]),
                st.sampled_from(["nope", ""]),
            ),
        },
        optional={
            "consumer_properties": CONSUMER_PROPERTIES,
            "labels": st.dictionaries(
                st.sampled_from(["team", "env", "topic", "1bad"]), NAMES, max_size=2
            ),
        },
    ),
    _table(name=NAMES, consumer_properties=CONSUMER_PROPERTIES),  # missing keys
)
TREES = st.fixed_dictionaries(
    {"clusters": mostly(st.lists(CLUSTER, min_size=1, max_size=3), st.just([]))},
    optional={"exporter": EXPORTER},
)

# --- TOML writer (inline tables, so any nesting is one line) --------------------------------


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif unicodedata.category(char) == "Cc":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_string(k)} = {_toml(v)}" for k, v in value.items()) + "}"


def _resolve(value: Any, files: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        return files[value]
    if isinstance(value, dict):
        return {k: _resolve(v, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, files) for v in value]
    return value


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("property")
    tls = generate_tls_files(root / "tls")
    garbage = root / "garbage.pem"
    garbage.write_text("not PEM\n")
    (root / "a-directory").mkdir()
    return {
        "@ca": str(tls.ca_cert),
        "@cert": str(tls.client_cert),
        "@key": str(tls.client_key),
        "@garbage": str(garbage),
        "@dir": str(root / "a-directory"),
        "@missing": str(root / "missing" / "file.pem"),
        "@under_file": str(garbage / "x.jsonl"),
        "@creatable": str(root / "new" / "lag.jsonl"),
        "@nul": str(root / "nul\x00name"),
        "@settings": str(root / "settings.toml"),
    }


@contextlib.contextmanager
def _isolated_logging() -> Iterator[None]:
    """run_command configures process-wide logging; put it back after every example."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


@settings(
    max_examples=150,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(tree=TREES)
# Pinned: a duration too long for a float in an otherwise valid file (which the summary of check
# would format) and the examples of issue 18.
@example(
    tree={
        "clusters": [{"name": "a", "bootstrap_servers": "h:1"}],
        "exporter": {"poll_interval": "9" * 400 + "s"},
    }
)
@example(
    tree={
        "clusters": [{"name": "a\x00", "bootstrap_servers": "h:1"}],
        "exporter": {
            "poll_interval": "99999999999999999999999999w",
            "timestamp_sampling": {"max_concurrent_fetches": 100_000_000_000},
            "jsonl": {"enabled": True, "path": "@dir"},
            "http": {"tls_cert_file": "@missing", "tls_key_file": "@missing"},
        },
    }
)
def test_check_exits_0_or_2_with_dotted_lines_and_agrees_with_run(
    tree: dict[str, Any], files: dict[str, str]
) -> None:
    path = Path(files["@settings"])
    path.write_text(
        "\n".join(f"{key} = {_toml(_resolve(v, files))}" for key, v in tree.items()) + "\n",
        encoding="utf-8",
    )
    out, err = io.StringIO(), io.StringIO()
    with _isolated_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_command(["check", str(path), "--log-format", "json"])

    assert code in (0, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    lines = err.getvalue().splitlines()
    if code == 2:
        assert out.getvalue() == ""
        assert lines
        bad = [line for line in lines if not PROBLEM_LINE.match(line)]
        assert not bad, bad
    else:
        assert out.getvalue().startswith(f"settings OK: {path}")

    # run validates through the same function before it starts anything: same verdict, same
    # problems in the same order.
    rejected: list[str] | None = None
    try:
        load_for_startup(path, os.environ)
    except ConfigError as exc:
        rejected = [f"{where}: {message}" for where, message in exc.problems]
    event(f"exit {code}")
    assert (rejected is not None) == (code == 2)
    if rejected is not None:
        assert rejected == lines
