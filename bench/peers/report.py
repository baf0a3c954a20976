"""The "Peers, side by side" table, from ``bench/results/compare-*.json`` (python -m bench
report puts it inside the generated part of docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f} s"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.1f} ms" if value < 0.01 else f"{value * 1000:,.0f} ms"


def _bytes(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value / 1024:.0f} KiB"


def _requests(c: dict[str, Any]) -> str:
    by_api = c["requests_per_cycle_median"]
    parts = ", ".join(f"{api} {n:,g}" for api, n in sorted(by_api.items()) if n)
    total = c["requests_per_cycle"]
    return f"**{total['p50']:,g}** (max {total['max']:,g}): {parts}"


def _time_lag(c: dict[str, Any]) -> str:
    judged = c["accuracy"]["time_lag"]
    if judged is None:
        return "not exported"
    if not judged["present"]:
        return f"none of {judged['lagging_rows']:,} present"
    return (
        f"{judged['within_window']:,} / {judged['lagging_rows']:,} within; "
        f"error median {judged['error_seconds_median']:+.2f} s, "
        f"max {judged['error_seconds_max_abs']:.2f} s"
    )


def _offset_lag(c: dict[str, Any]) -> str:
    judged = c["accuracy"]["offset_lag"]
    return f"{judged['exact']:,} / {judged['expected']:,} exact"


ROWS: list[tuple[str, Any]] = [
    ("version", lambda c: c["version"] or "–"),
    ("collects", lambda c: "on each scrape" if c["collects_on_scrape"] else "on its own timer"),
    ("requests per cycle, median (max); median by API", _requests),
    ("bytes received per cycle, median", lambda c: _bytes(c["response_bytes_per_cycle"]["p50"])),
    (
        "CPU per cycle, median / max",
        lambda c: (
            f"{_s(c['cpu_seconds_per_cycle']['p50'])} / {_s(c['cpu_seconds_per_cycle']['max'])}"
        ),
    ),
    (
        "RSS per cycle, median; peak incl. bursts",
        lambda c: f"{c['rss_mb']['p50']:.0f} MB; {c['peak_rss_mb']:.0f} MB",
    ),
    ("process start → first complete /metrics", lambda c: _s(c["first_complete_seconds"])),
    (
        "one scrape per interval, median / max",
        lambda c: (
            f"{_ms(c['prometheus_scrape_seconds']['p50'])} / "
            f"{_ms(c['prometheus_scrape_seconds']['max'])}"
        ),
    ),
    (
        "bursts of 20 every 100 ms: p50 / p99 (scrapes)",
        lambda c: (
            "–"
            if "error" in c["bursts"]
            else f"{_ms(c['bursts']['latency']['p50'])} / {_ms(c['bursts']['latency']['p99'])} "
            f"({c['bursts']['requests']:,})"
        ),
    ),
    ("exposition (text, last scrape)", lambda c: _bytes(c["exposition_bytes"])),
    ("offset lag vs truth", _offset_lag),
    ("time lag vs truth (lagging rows)", _time_lag),
    (
        "load average before → after",
        lambda c: f"{c['load_average_before'][0]:.2f} → {c['load_average_after'][0]:.2f}",
    ),
]


def compare_table(result: dict[str, Any]) -> str:
    measured = [c for c in result["contenders"] if "error" not in c]
    lines = [
        "| | " + " | ".join(c["label"] for c in measured) + " |",
        "|---" * (len(measured) + 1) + "|",
    ]
    for label, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(str(cell(c)) for c in measured) + " |")
    return "\n".join(lines)


def _first_line(contender: dict[str, Any]) -> str:
    return str(contender["error"]).splitlines()[0].removeprefix(f"{contender['label']}: ")


def peers_section(loaded: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines for every compare result (empty when there is none)."""
    parts: list[str] = []
    for name, result in sorted(loaded.items()):
        if result.get("kind") != "compare":
            continue
        truth = result["truth"]
        parts += [
            f"Peers, side by side (`{result['preset']}` preset, `{name}.json`): "
            f"{truth['groups_listed']} groups, {truth['rows']:,} group-partitions, "
            f"{truth['lagging_rows']:,} lagging; poll interval "
            f"{result['options']['poll_interval']:g} s; {result['cycles']} cycles each; "
            f"command `{result['command']}`. A cycle is one poll interval (one scrape per "
            "interval, counters read at its boundaries).",
            "",
            compare_table(result),
            "",
        ]
        failed = [c for c in result["contenders"] if "error" in c]
        missing = result.get("peers_unavailable", {})
        if failed or missing:
            notes = [f"{c['label']}: failed ({_first_line(c)})" for c in failed]
            notes += [
                f"{name}: not run ({reason.removeprefix(name + ': ')})"
                for name, reason in missing.items()
            ]
            parts += ["Not in the table: " + "; ".join(notes) + ".", ""]
    return parts
