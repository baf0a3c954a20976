"""Start-up loads only what the settings use (docs/pipeline.md, "The first scrape").

Everything imported before the first cycle starts delays the first complete /metrics. A fresh
interpreter imports the entry points, validates a settings file and builds the exporter exactly
as ``klag-pipeline run`` does before it serves; the heavy optional modules must then be absent
unless the settings enable what needs them. The other cases enable those features: the probe
does see the modules when they are there.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

# Imports ``run``'s entry points, validates the settings (as the CLI does) and builds the
# exporter; prints the loaded module names. No network: building makes no connection.
PROBE = """
import json, sys
import klag_pipeline.app, klag_pipeline.cli
from klag_pipeline.startup import load
loaded, _ = load(sys.argv[1], {})
klag_pipeline.app.Exporter(loaded.settings)
print(json.dumps(sorted(sys.modules)))
"""

CLUSTER = """
[[clusters]]
name = "main"
bootstrap_servers = "127.0.0.1:9"
"""

OPTIONAL: dict[str, str | None] = {
    # module → the case of ENABLED whose settings load it (None: no case here does).
    # The OpenTelemetry SDK and the OTLP sink: only with [exporter.otel] enabled.
    "opentelemetry": "otel and sharding",
    "klag_pipeline.sinks.otlp": "otel and sharding",
    # The group-sharding coordinator: only with [exporter.sharding] enabled.
    "klag_pipeline.sharding.gate": "otel and sharding",
    # The leadership providers: only the configured one, only with leadership enabled (the
    # Kubernetes one also needs a kubeconfig or a service account to validate, so no case).
    "klag_pipeline.leadership.kubernetes": None,
    "klag_pipeline.leadership.kubernetes_api": None,
    "klag_pipeline.leadership.kafka": "leadership and jsonl",
    # The JSON-lines sink: only with [exporter.jsonl] enabled.
    "klag_pipeline.sinks.jsonl": "leadership and jsonl",
    # aiohttp's client (and with it the package): the OAuth token client loads it when it first
    # asks for a token, the HTTP server once the exporter serves; neither is needed to build.
    "aiohttp": None,
    # The package metadata (and the email and zipfile packages it loads) for --version and the
    # build info: read when first used.
    "importlib.metadata": None,
}

ENABLED = {
    "otel and sharding": """
[exporter.otel]
enabled = true
endpoint = "http://127.0.0.1:4317"

[exporter.sharding]
enabled = true
""",
    # Leadership and sharding exclude each other.
    "leadership and jsonl": """
[exporter.leadership]
enabled = true
provider = "kafka"

[exporter.jsonl]
enabled = true
""",
}


def loaded_modules(settings: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(settings)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def present(modules: set[str], name: str) -> bool:
    return any(module == name or module.startswith(name + ".") for module in modules)


def test_default_settings_load_no_optional_module(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(CLUSTER, encoding="utf-8")
    modules = loaded_modules(settings)
    assert "klag_pipeline.app" in modules  # the probe did run the exporter's set-up
    assert [name for name in OPTIONAL if present(modules, name)] == []


@pytest.mark.parametrize("case", sorted(ENABLED))
def test_enabled_features_load_their_modules(tmp_path: Path, case: str) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(ENABLED[case] + CLUSTER, encoding="utf-8")
    modules = loaded_modules(settings)
    wanted = [name for name, loaded_by in OPTIONAL.items() if loaded_by == case]
    assert wanted
    assert [name for name in wanted if not present(modules, name)] == []


def test_every_listed_module_exists() -> None:
    # A misspelt name would never be loaded, and the first test would pass for nothing.
    assert [name for name in OPTIONAL if importlib.util.find_spec(name) is None] == []
