"""Regenerate the generated part of docs/benchmarks.md from bench/results/*.json.

Only the text between the ``BEGIN GENERATED`` and ``END GENERATED`` markers is replaced; the
hand-written analysis around it stays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import RESULTS
from bench.peers.report import peers_section
from bench.processes import REPO

DOC = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN GENERATED (python -m bench report) -->"
END = "<!-- END GENERATED -->"
PRESET_ORDER = ("small", "medium", "large")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f} s"


def _requests(counts: dict[str, float]) -> str:
    return ", ".join(f"{api} {n:g}" for api, n in sorted(counts.items())) or "–"


def _ratio(metrics: dict[str, Any] | None, health: dict[str, Any] | None) -> str:
    """/metrics p99 over /health p99, both for bursts started during a cycle."""
    if not metrics or not health:
        return "–"
    a, b = metrics["latency_during_cycles"]["p99"], health["latency_during_cycles"]["p99"]
    return "–" if not a or not b else f"{a / b:.1f}×"


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def preset_table(names: list[str], results: list[dict[str, Any]]) -> str:
    heads = names
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, values: list[str]) -> None:
        rows.append((label, values))

    ms = [r["measurements"] for r in results]
    row(
        "groups (with commits + empty) / group-partitions",
        [f"{r['truth']['groups_listed']} / {r['truth']['rows']:,}" for r in results],
    )
    row(
        "topics × partitions; lagging rows; distinct offsets read",
        [
            f"{r['truth']['topics']} × {r['scenario']['partitions']}; "
            f"{r['truth']['lagging_rows']:,}; {r['truth']['distinct_offsets_to_read']:,}"
            for r in results
        ],
    )
    row("poll interval", [f"{r['options']['poll_interval']:g} s" for r in results])
    row("cycle, cold cache", [_s(m["cycle_seconds_cold"]) for m in ms])
    row(
        "cycle p50 / p95, steady (n)",
        [
            f"{_s(m['cycle_seconds_steady']['p50'])} / {_s(m['cycle_seconds_steady']['p95'])} "
            f"({m['cycle_seconds_steady']['n']})"
            for m in ms
        ],
    )
    row(
        "cycle p50 / max while scraped",
        [
            f"{_s(m['cycle_seconds_under_scrape']['p50'])} / "
            f"{_s(m['cycle_seconds_under_scrape']['max'])}"
            for m in ms
        ],
    )
    row(
        "requests per steady cycle (median, by API)",
        [_requests(m["requests_per_cycle_steady_median"]) for m in ms],
    )
    row(
        "requests excl. Fetch: steady max / cold",
        [
            f"{m['requests_excluding_fetch_steady_max']} / {m['requests_excluding_fetch_cold']}"
            for m in ms
        ],
    )
    row(
        "timestamp Fetches: cold (budget) / steady max",
        [
            f"{m['fetch_requests_cold']} ({m['fetch_budget_cold']}) / "
            f"{m['fetch_requests_steady']['max']}"
            for m in ms
        ],
    )
    row(
        "bytes received: cold / steady p50",
        [
            f"{m['response_bytes_cold'] / 2**20:.2f} MiB / "
            f"{(m['response_bytes_steady']['p50'] or 0) / 1024:.0f} KiB"
            for m in ms
        ],
    )
    row(
        "CPU per steady cycle p50 / max",
        [
            f"{m['cpu_seconds_per_cycle_steady']['p50']:.2f} / "
            f"{m['cpu_seconds_per_cycle_steady']['max']:.2f} s"
            for m in ms
        ],
    )
    row("CPU, start-up + cold cycle", [f"{m['cpu_seconds_cold_incl_startup']:.2f} s" for m in ms])
    row("peak RSS", [f"{m['peak_rss_mb']:.0f} MB" for m in ms])
    row(
        "process start → first complete /metrics (offsets) / with time lag",
        [
            f"{_s(m['first_complete_metrics_seconds'])} / "
            f"{_s(m.get('first_time_lag_metrics_seconds'))}"
            for m in ms
        ],
    )
    for mode, label in (
        ("burst", "/metrics p50 / p99, bursts of 20 (during cycles p99)"),
        ("saturation", "/metrics p50 / p99, 20 back-to-back (req/s)"),
        ("single", "/metrics p50 / p99, one client (req/s)"),
        ("health_burst", "/health p50 / p99, bursts of 20 (during cycles p99)"),
    ):
        values = []
        for m in ms:
            s = m["scrape"].get(mode)
            if s is None:
                values.append("–")
                continue
            extra = (
                _ms(s["latency_during_cycles"]["p99"])
                if mode in ("burst", "health_burst")
                else f"{s['per_second'] or 0:,.0f}/s"
            )
            values.append(f"{_ms(s['latency']['p50'])} / {_ms(s['latency']['p99'])} ({extra})")
        row(label, values)
    row(
        "/metrics p99 ÷ /health p99, bursts during cycles",
        [_ratio(m["scrape"].get("burst"), m["scrape"].get("health_burst")) for m in ms],
    )
    row(
        "exposition: text / gzip / samples",
        [
            f"{m['exposition']['text_bytes'] / 2**20:.1f} MiB / "
            f"{(m['exposition']['gzip_bytes'] or 0) / 1024:.0f} KiB / "
            f"{m['exposition']['samples']:,}"
            for m in ms
        ],
    )
    row(
        "event-loop lag max after cycle 1 / incl. start-up (wake-ups > 100 ms)",
        [
            f"{_ms(m['event_loop_lag'].get('max_seconds_after_first_cycle'))} / "
            f"{_ms(m['event_loop_lag']['max_seconds'])} "
            f"({m['event_loop_lag']['wakeups_over_100ms']})"
            for m in ms
        ],
    )
    row(
        "load average before → after",
        [f"{r['load_average_before'][0]:.2f} → {r['load_average_after'][0]:.2f}" for r in results],
    )
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    return "\n".join(lines)  # fmt: skip


def soak_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    rss, fds = s["rss_mb"], s["open_fds"]
    return "\n".join(
        [
            "| soak | value |",
            "|---|---|",
            f"| cycles (poll interval) | {s['cycles']} "
            f"({result['options']['poll_interval']:g} s), churn every "
            f"{result['options']['churn_every']} cycles |",
            f"| churn | {_requests(result['churn'])} |",
            f"| cycles with errors | {s['cycles_with_errors']} |",
            f"| RSS first tenth → last tenth (median) | {rss['first_tenth_median']} → "
            f"{rss['last_tenth_median']} MB (min {rss['min']}, max {rss['max']}) |",
            f"| RSS slope | {rss['slope_mb_per_100_cycles']} MB per 100 cycles |",
            f"| open fds first tenth → last tenth (max) | {fds['first_tenth_max']} → "
            f"{fds['last_tenth_max']} (min {fds['min']}, max {fds['max']}) |",
            f"| cycle p50 / max | {_s(s['cycle_seconds']['p50'])} / "
            f"{_s(s['cycle_seconds']['max'])} |",
            f"| event-loop lag max | {_ms(result['event_loop_lag_max_seconds'])} |",
            f"| wall time; load average before → after | {result['wall_seconds']:.0f} s; "
            f"{result['load_average_before'][0]:.2f} → {result['load_average_after'][0]:.2f} |",
        ]
    )


def generated_section() -> str:
    # Only preset runs (and soaks) carry ``measurements``; codecs.json and evaluation.json are
    # micro-benchmarks with their own shape, reported by hand in docs/benchmarks.md.
    loaded = {p.stem: _load(p) for p in sorted(RESULTS.glob("*.json"))}
    presets = {
        name: run
        for name, run in loaded.items()
        if ("measurements" in run or name.startswith("soak-")) and not name.startswith("curve-")
    }
    names = [name for name in PRESET_ORDER if name in presets]
    names += sorted(n for n in presets if n not in PRESET_ORDER and not n.startswith("soak-"))
    runs = [presets[name] for name in names]
    parts = [BEGIN, ""]
    if runs:
        machine = runs[-1]["machine"]
        parts += [
            f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel "
            f"{machine['kernel']}; Python {machine['python']}, aiokafka {machine['aiokafka']}, "
            f"Apache Kafka {machine['kafka']} (one local KRaft broker). `free -h`:",
            "",
            "```",
            machine["free_h"],
            "```",
            "",
            "Commands: " + "; ".join(f"`{r['command']}`" for r in runs),
            "",
            preset_table(names, runs),
            "",
        ]
    soaks = [r for name, r in presets.items() if name.startswith("soak-")]
    for soak in soaks:
        parts += [f"Soak (`{soak['preset']}` preset):", "", soak_table(soak), ""]
    parts += peers_section(loaded)
    parts.append(END)
    return "\n".join(parts)


def write_report(doc: Path = DOC) -> Path:
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(head + generated_section() + tail)
    from bench.curve import write_curve  # the cost curve's PNG and section (issue 17)

    write_curve(doc)
    return doc
