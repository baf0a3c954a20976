"""The cost curve (issue 17, target 6): CPU, RSS and exposition size against group-partitions.

Reads the ``bench/results/curve-*.json`` runs (ordinary ``python -m bench run`` results named
``curve-<groups>``), takes per run the steady CPU per cycle (p50), the peak RSS, the RSS at the
end of a steady cycle (median), the exposition's text and gzip bytes and its rows
(group-partitions), fits a least-squares line of each figure against the rows, and writes

- ``docs/cost-curve.png`` (matplotlib, Agg): three panels — CPU s/cycle, RSS MiB, exposition
  MiB — against group-partitions, each point labelled with its group count, each fit dashed;
- the table between the ``BEGIN CURVE`` / ``END CURVE`` markers of docs/benchmarks.md.

An exposition is used only if it carried every expected ``kafka_consumergroup_group_lag``
series. When it did not (the exporter had gone stale by the time it was read), the exposition
of a supplementary run of the same size, ``curve-<groups>-<anything>.json``, is used if that one
is complete (the table names it); otherwise the point has no exposition figure and stays out of
those two fits. Supplementary runs are not points of their own.

``python -m bench report`` calls ``write_curve``; ``python -m bench.curve`` does only this part.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.harness import RESULTS
from bench.processes import REPO

DOC = REPO / "docs" / "benchmarks.md"
PNG = REPO / "docs" / "cost-curve.png"
PREFIX = "curve-"
POINT = re.compile(r"curve-(\d+)")
"""A result named like this is a point; ``curve-<groups>-<suffix>`` is a supplement."""
BEGIN = "<!-- BEGIN CURVE (python -m bench report) -->"
END = "<!-- END CURVE -->"
HEADING = "## Cost curve (issue 17)"
PER = 1000
"""Slopes are stated per this many group-partitions."""
MIB = 2**20


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One run of the curve: its size and the figures that are fitted against ``rows``."""

    name: str
    groups: int
    rows: int
    cpu_seconds: float
    """Steady CPU per cycle, p50 (core-seconds)."""
    peak_rss_mib: float
    rss_end_mib: float
    """RSS sampled at the end of each steady cycle, median."""
    text_mib: float | None
    gzip_mib: float | None
    """None when no complete exposition of this size was read."""
    poll_seconds: float
    steady_cycles: int
    load_before: float
    load_after: float
    command: str
    exposition_from: str | None = None
    """Name of the run the exposition figures come from, when not this one."""


FIGURES: tuple[tuple[str, str, str], ...] = (
    ("cpu_seconds", "CPU per steady cycle (p50)", "core-s"),
    ("peak_rss_mib", "peak RSS", "MiB"),
    ("rss_end_mib", "RSS at the end of a steady cycle (median)", "MiB"),
    ("text_mib", "exposition, text", "MiB"),
    ("gzip_mib", "exposition, gzip", "MiB"),
)
"""(CurvePoint attribute, label, unit) of every fitted figure, in table order."""


@dataclass(frozen=True, slots=True)
class Fit:
    """y = intercept + slope × rows, by least squares."""

    slope: float
    """Per group-partition."""
    intercept: float
    r_squared: float | None
    """None when every y is the same (no variance to explain)."""

    @property
    def per_thousand(self) -> float:
        return self.slope * PER


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Fit:
    """Ordinary least squares of ``ys`` on ``xs`` (at least two distinct xs)."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    if len(set(xs)) < 2:
        raise ValueError("a line needs at least two distinct x values")
    slope, intercept = statistics.linear_regression(xs, ys)
    r_squared = statistics.correlation(xs, ys) ** 2 if len(set(ys)) > 1 else None
    return Fit(slope, intercept, r_squared)


def point_from_result(name: str, result: dict[str, Any]) -> CurvePoint:
    """The curve's figures from one ``python -m bench run`` result."""
    m = result["measurements"]
    exposition = complete_exposition(result)
    warm = int(result["options"]["warm_cycles"])
    # Cycles 2 .. 1 + warm_cycles end before the scrape phase starts: the steady cycles.
    steady = m["per_cycle"][1 : 1 + warm]
    if not steady:
        raise ValueError(f"{name}: no steady cycle")
    return CurvePoint(
        name=name,
        groups=int(result["scenario"]["groups"]),
        rows=int(result["truth"]["rows"]),
        cpu_seconds=float(m["cpu_seconds_per_cycle_steady"]["p50"]),
        peak_rss_mib=float(m["peak_rss_mb"]),
        rss_end_mib=float(statistics.median(c["rss_mb"] for c in steady)),
        text_mib=exposition[0] if exposition else None,
        gzip_mib=exposition[1] if exposition else None,
        poll_seconds=float(result["options"]["poll_interval"]),
        steady_cycles=len(steady),
        load_before=float(result["load_average_before"][0]),
        load_after=float(result["load_average_after"][0]),
        command=str(result["command"]),
    )


def complete_exposition(result: dict[str, Any]) -> tuple[float, float] | None:
    """(text MiB, gzip MiB) of the run's final exposition, if it carried every row's series."""
    exposition = result["measurements"]["exposition"]
    if exposition.get("group_lag_series", 0) < int(result["truth"]["rows"]):
        return None
    return exposition["text_bytes"] / MIB, (exposition["gzip_bytes"] or 0) / MIB


def load_points(results: Path = RESULTS) -> list[CurvePoint]:
    points: list[CurvePoint] = []
    supplements: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path in sorted(results.glob(f"{PREFIX}*.json")):
        data: dict[str, Any] = json.loads(path.read_text())
        if POINT.fullmatch(path.stem):
            points.append(point_from_result(path.stem, data))
        else:
            groups = path.stem.removeprefix(PREFIX).split("-", 1)[0]
            supplements.setdefault(f"{PREFIX}{groups}", []).append((path.stem, data))
    for i, point in enumerate(points):
        if point.text_mib is not None:
            continue
        for name, data in supplements.get(point.name, []):
            exposition = complete_exposition(data)
            if exposition is not None and int(data["truth"]["rows"]) == point.rows:
                points[i] = replace(point, text_mib=exposition[0], gzip_mib=exposition[1],
                                    exposition_from=name)  # fmt: skip
                break
    return sorted(points, key=lambda p: p.rows)


def _measured(points: Sequence[CurvePoint], key: str) -> list[tuple[int, float]]:
    """(rows, value) of the points that have this figure."""
    return [(p.rows, float(v)) for p in points if (v := getattr(p, key)) is not None]


def fits(points: Sequence[CurvePoint]) -> dict[str, Fit]:
    """A line per figure that at least two sizes measured."""
    lines = {}
    for key, _, _ in FIGURES:
        measured = _measured(points, key)
        if len({x for x, _ in measured}) >= 2:
            lines[key] = fit_line([x for x, _ in measured], [y for _, y in measured])
    return lines


def _num(value: float) -> str:
    """Three significant digits for small values, whole numbers with separators from 100."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.3g}"


def curve_table(points: Sequence[CurvePoint], lines: dict[str, Fit]) -> str:
    """Markdown: one row per run, then one row per fitted figure."""
    out = [
        "| groups | group-partitions | CPU per steady cycle p50 | peak RSS | RSS end of cycle "
        "(median) | exposition text | exposition gzip | poll; steady cycles | "
        "load average before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for p in points:
        if p.text_mib is None or p.gzip_mib is None:
            text = gzip = "– (incomplete)"
            notes.append(
                f"{p.groups:,} groups: the final exposition carried fewer group lag series than"
                " rows, and no complete supplementary run of this size exists."
            )
        else:
            mark = "" if p.exposition_from is None else f" ({len(notes) + 1})"
            text, gzip = f"{p.text_mib:.1f} MiB{mark}", f"{p.gzip_mib:.2f} MiB{mark}"
            if p.exposition_from is not None:
                notes.append(
                    f"{p.groups:,} groups: exposition from `{p.exposition_from}.json` (same "
                    f"scenario); the final exposition of `{p.name}.json` carried fewer group "
                    "lag series than rows."
                )
        out.append(
            f"| {p.groups:,} | {p.rows:,} | {p.cpu_seconds:.2f} s | {p.peak_rss_mib:.0f} MiB | "
            f"{p.rss_end_mib:.0f} MiB | {text} | {gzip} | {p.poll_seconds:g} s; "
            f"{p.steady_cycles} | {p.load_before:.2f} → {p.load_after:.2f} |"
        )
    if notes:
        out += ["", *(f"({i}) {note}" for i, note in enumerate(notes, 1))]
    out += [
        "",
        f"| least-squares line against group-partitions | slope per {PER:,} group-partitions "
        "| intercept | r² |",
        "|---|---|---|---|",
    ]
    for key, label, unit in FIGURES:
        fit = lines.get(key)
        if fit is None:
            out.append(f"| {label} | – (fewer than two sizes measured) | – | – |")
            continue
        r2 = "–" if fit.r_squared is None else f"{fit.r_squared:.4f}"
        out.append(
            f"| {label} | {_num(fit.per_thousand)} {unit} | {_num(fit.intercept)} {unit} | {r2} |"
        )
    return "\n".join(out)


def curve_section(points: Sequence[CurvePoint]) -> str:
    """The text between (and including) the markers."""
    if len(points) < 2 or len({p.rows for p in points}) < 2:
        body = f"Fewer than two `{PREFIX}*` results with different sizes: no curve."
    else:
        body = "\n".join(
            [
                "![cost curve](cost-curve.png)",
                "",
                "Commands: " + "; ".join(f"`{p.command}`" for p in points),
                "",
                curve_table(points, fits(points)),
            ]
        )
    return f"{BEGIN}\n\n{body}\n\n{END}"


def plot(points: Sequence[CurvePoint], lines: dict[str, Fit], path: Path = PNG) -> Path:
    """Three panels against group-partitions; deterministic bytes for the same inputs."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    span = [0, max(p.rows for p in points) * 1.12]  # room for the last label
    # (title, unit, series); a series is (attribute, label, colour, marker, right-hand axis).
    panels: tuple[tuple[str, str, tuple[tuple[str, str, str, str, bool], ...]], ...] = (
        ("CPU per steady cycle (p50)", "core-s", (("cpu_seconds", "CPU", "C0", "o", False),)),
        (
            "Memory",
            "MiB",
            (
                ("peak_rss_mib", "peak RSS", "C1", "o", False),
                ("rss_end_mib", "RSS at cycle end", "C2", "s", False),
            ),
        ),
        (
            "Exposition size (gzip on the right axis)",
            "MiB",
            (("text_mib", "text", "C3", "o", False), ("gzip_mib", "gzip", "C4", "s", True)),
        ),
    )
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        figure = Figure(figsize=(15, 5), dpi=100, layout="constrained")
        for ax, (title, unit, series) in zip(figure.subplots(1, 3), panels, strict=True):
            handles = []
            right = None
            for key, label, colour, marker, on_right in series:
                if on_right:
                    right = right or ax.twinx()
                target = right if on_right and right is not None else ax
                measured = [(p, float(v)) for p in points if (v := getattr(p, key)) is not None]
                fit = lines.get(key)
                (dots,) = target.plot(
                    [p.rows for p, _ in measured],
                    [y for _, y in measured],
                    marker,
                    color=colour,
                    fillstyle="none" if on_right else "full",
                    label=f"{label} (no line: fewer than two sizes)",
                )
                if fit is not None:
                    (dots,) = target.plot(
                        span,
                        [fit.intercept + fit.slope * x for x in span],
                        "--",
                        color=colour,
                        label=f"{label}: {_num(fit.per_thousand)} {unit} per {PER:,} rows",
                    )
                handles.append(dots)
                for p, y in measured:
                    target.annotate(
                        f"{p.groups:,}",
                        (p.rows, y),
                        textcoords="offset points",
                        xytext=(-12, 6) if on_right else (5, -12),
                        fontsize=8,
                        color=colour,
                    )
                target.set_ylim(bottom=0)
                target.set_ylabel(f"{label}, {unit}" if on_right else unit)
            ax.set_title(title)
            ax.set_xlabel("group-partitions (rows); points labelled with the group count")
            ax.set_xlim(span)
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter("{x:,.0f}")
            ax.legend(handles=handles, loc="upper left", fontsize=8)
        figure.suptitle(
            "klag-pipeline cost per size (python -m bench run, one local broker, 2 cores)"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # No Software/date chunks: the same inputs give the same bytes (committable).
        figure.savefig(path, format="png", metadata={"Software": None})
    return path


def write_curve(doc: Path = DOC, png: Path | None = None, results: Path = RESULTS) -> list[Path]:
    """Refresh the PNG (when there is a curve; next to ``doc`` unless given) and the marked
    section of ``doc``."""
    png = png or doc.with_name(PNG.name)
    points = load_points(results)
    written = []
    if len(points) >= 2 and len({p.rows for p in points}) >= 2:
        written.append(plot(points, fits(points), png))
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{HEADING}\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(head + curve_section(points) + tail)
    written.append(doc)
    return written


if __name__ == "__main__":
    for written_path in write_curve():
        print(written_path, file=sys.stderr)
