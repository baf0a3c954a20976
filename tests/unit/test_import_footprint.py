"""Start-up loads only what the settings use (docs/pipeline.md, "The first scrape").

Everything imported before the first cycle starts delays the first complete /metrics. A fresh
interpreter imports the entry points, validates a settings file and builds the exporter exactly
as ``klag-pipeline run`` does before it serves; the heavy optional modules must then be absent
unless the settings enable what needs them. The second case enables those features, so the
test would see the modules if they were there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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

OPTIONAL = {
    # The OpenTelemetry SDK and the OTLP sink: only with [exporter.otel] enabled.
    "opentelemetry": "otel",
    "klag_pipeline.sinks.otlp": "otel",
    # The group-sharding coordinator: only with [exporter.sharding] enabled.
    "klag_pipeline.sharding.gate": "sharding",
    # aiohttp's client (and with it the package): the OAuth token client loads it when it first
    # asks for a token, the HTTP server once the exporter serves; neither is needed to build.
    "aiohttp": "never before serving",
    # The package metadata (and the email and zipfile packages it loads) for --version and the
    # build info: read when first used.
    "importlib.metadata": "never before serving",
}

ENABLED = """
[exporter.otel]
enabled = true
endpoint = "http://127.0.0.1:4317"

[exporter.sharding]
enabled = true
"""


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


def test_enabled_features_load_their_modules(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(ENABLED + CLUSTER, encoding="utf-8")
    modules = loaded_modules(settings)
    wanted = [name for name, needs in OPTIONAL.items() if needs in ("otel", "sharding")]
    assert len(wanted) == 3
    assert [name for name in wanted if not present(modules, name)] == []
