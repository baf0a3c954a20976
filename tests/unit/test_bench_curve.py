"""The cost curve's pure part (bench/curve.py): the least-squares fit, the figures taken from a
result, the table and the marked section. No benchmark is run and nothing is timed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.curve import (
    BEGIN,
    END,
    FIGURES,
    HEADING,
    CurvePoint,
    Fit,
    curve_section,
    curve_table,
    fit_line,
    fits,
    load_points,
    point_from_result,
    write_curve,
)


def test_points_on_an_exact_line_give_its_slope_and_intercept() -> None:
    fit = fit_line([5_000, 20_000, 100_000], [0.25 + 0.04e-3 * x for x in (5_000, 20_000, 100_000)])
    assert fit.per_thousand == pytest.approx(0.04)
    assert fit.intercept == pytest.approx(0.25)
    assert fit.r_squared == pytest.approx(1.0)


def test_scattered_points_give_the_least_squares_line() -> None:
    # y = 1, 3, 2 at x = 0, 1, 2: slope 0.5, intercept 1.5 (mean y 2 at mean x 1), r² 0.25.
    fit = fit_line([0, 1, 2], [1, 3, 2])
    assert fit.slope == pytest.approx(0.5)
    assert fit.intercept == pytest.approx(1.5)
    assert fit.r_squared == pytest.approx(0.25)


def test_flat_points_have_no_r_squared() -> None:
    fit = fit_line([1, 2, 3], [7, 7, 7])
    assert (fit.slope, fit.intercept, fit.r_squared) == (0.0, 7.0, None)


@pytest.mark.parametrize(
    ("xs", "ys", "message"),
    [([1, 1], [1, 2], "two distinct"), ([1], [1], "two distinct"), ([1, 2], [1], "length")],
)
def test_a_line_needs_two_distinct_sizes(xs: list[float], ys: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_line(xs, ys)


def _result(
    groups: int, rows: int, *, cpu: float, rss: list[float], series: int | None = None
) -> dict[str, Any]:
    """The parts of a ``python -m bench run`` result the curve reads; ``series`` lag series in
    the final exposition (default: all rows)."""
    return {
        "command": f"python -m bench run --groups {groups}",
        "scenario": {"groups": groups},
        "truth": {"rows": rows},
        "options": {"warm_cycles": 3, "poll_interval": 5.0},
        "load_average_before": [0.5, 0.4, 0.3],
        "load_average_after": [1.5, 0.9, 0.4],
        "measurements": {
            "cpu_seconds_per_cycle_steady": {"p50": cpu},
            "peak_rss_mb": 3.0 * rss[0],
            "exposition": {
                "text_bytes": rows * 1024 * 1024,
                "gzip_bytes": rows * 1024,
                "group_lag_series": rows if series is None else series,
            },
            # Cycle 1 (cold) and the cycle after the warm ones (scrape phase) are not steady.
            "per_cycle": [{"rss_mb": r} for r in [999.0, *rss, 999.0]],
        },
    }


def test_a_point_takes_the_steady_cycles_only() -> None:
    point = point_from_result("curve-2", _result(2, 20, cpu=0.7, rss=[10.0, 30.0, 20.0]))
    assert point.groups == 2
    assert point.rows == 20
    assert point.cpu_seconds == 0.7
    assert point.peak_rss_mib == 30.0
    assert point.rss_end_mib == 20.0  # median of 10, 30, 20; the 999s are outside
    assert point.text_mib == 20.0
    assert point.gzip_mib == pytest.approx(20 / 1024)
    assert point.steady_cycles == 3
    assert (point.load_before, point.load_after) == (0.5, 1.5)


def _point(groups: int, rows: int, value: float) -> CurvePoint:
    return CurvePoint(
        name=f"curve-{groups}",
        groups=groups,
        rows=rows,
        cpu_seconds=value,
        peak_rss_mib=value,
        rss_end_mib=value,
        text_mib=value,
        gzip_mib=value,
        poll_seconds=30.0,
        steady_cycles=6,
        load_before=1.25,
        load_after=2.5,
        command=f"python -m bench run --groups {groups}",
    )


def test_every_figure_is_fitted_against_rows() -> None:
    # value = 2 + 0.003 × rows for every figure: slope 3 per 1,000 rows, intercept 2.
    points = [_point(g, 10 * g, 2 + 0.003 * 10 * g) for g in (500, 2_000, 10_000)]
    lines = fits(points)
    assert set(lines) == {key for key, _, _ in FIGURES}
    for fit in lines.values():
        assert fit.per_thousand == pytest.approx(3.0)
        assert fit.intercept == pytest.approx(2.0)


def test_table_has_a_row_per_run_and_per_figure() -> None:
    points = [_point(500, 5_000, 1.0), _point(20_000, 200_000, 40.0)]
    line = Fit(slope=0.0125, intercept=-0.5, r_squared=0.99876)
    table = curve_table(points, {key: line for key, _, _ in FIGURES})
    rows = table.splitlines()
    assert "| 500 | 5,000 | 1.00 s |" in rows[2]
    assert "| 20,000 | 200,000 | 40.00 s |" in rows[3]
    assert "30 s; 6 | 1.25 → 2.50 |" in rows[3]
    cpu = next(r for r in rows if r.startswith("| CPU per steady cycle (p50) |"))
    assert cpu == "| CPU per steady cycle (p50) | 12.5 core-s | -0.5 core-s | 0.9988 |"
    assert sum(1 for r in rows if "MiB | " in r and r.startswith("| exposition")) == 2


def test_section_needs_two_sizes() -> None:
    one = curve_section([_point(500, 5_000, 1.0)])
    assert one.startswith(BEGIN)
    assert one.endswith(END)
    assert "no curve" in one
    two = curve_section([_point(500, 5_000, 1.0), _point(2_000, 20_000, 4.0)])
    assert "cost-curve.png" in two
    assert "`python -m bench run --groups 2000`" in two


def test_write_curve_replaces_only_its_markers(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    # Only curve-* results are read; another result in the directory is ignored.
    (results / "large.json").write_text("{}")
    (results / "curve-1.json").write_text(json.dumps(_result(1, 10, cpu=0.5, rss=[5, 5, 5])))
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nbefore\n\n{HEADING}\n\n{BEGIN}\nstale\n{END}\n\nafter\n")
    write_curve(doc, results=results)
    text = doc.read_text()
    assert "stale" not in text
    assert "no curve" in text  # one size only, and no PNG yet
    assert not (tmp_path / "cost-curve.png").exists()
    assert text.startswith("# B\n\nbefore\n\n")
    assert text.endswith("\n\nafter\n")

    (results / "curve-2.json").write_text(json.dumps(_result(2, 20, cpu=1.0, rss=[9, 9, 9])))
    assert [p.groups for p in load_points(results)] == [1, 2]
    pytest.importorskip("matplotlib")
    write_curve(doc, results=results)
    assert (tmp_path / "cost-curve.png").read_bytes().startswith(b"\x89PNG")
    assert doc.read_text().count(BEGIN) == 1


def _write(results: Path, name: str, result: dict[str, Any]) -> None:
    (results / f"{name}.json").write_text(json.dumps(result))


def test_an_incomplete_exposition_is_not_a_figure(tmp_path: Path) -> None:
    _write(tmp_path, "curve-1", _result(1, 10, cpu=0.5, rss=[5, 5, 5]))
    _write(tmp_path, "curve-2", _result(2, 20, cpu=1.0, rss=[9, 9, 9]))
    _write(tmp_path, "curve-4", _result(4, 40, cpu=2.0, rss=[9, 9, 9], series=39))
    points = load_points(tmp_path)
    assert [(p.groups, p.text_mib) for p in points] == [(1, 10.0), (2, 20.0), (4, None)]
    lines = fits(points)
    assert lines["cpu_seconds"].per_thousand == pytest.approx(50.0)  # all three sizes
    assert lines["text_mib"].per_thousand == pytest.approx(1000.0)  # the two complete ones
    table = curve_table(points, lines)
    assert "| 4 | 40 | 2.00 s | 27 MiB | 9 MiB | – (incomplete) | – (incomplete) |" in table
    assert "(1) 4 groups: the final exposition carried fewer group lag series" in table


def test_a_supplementary_run_of_the_same_size_supplies_the_exposition(tmp_path: Path) -> None:
    _write(tmp_path, "curve-1", _result(1, 10, cpu=0.5, rss=[5, 5, 5]))
    _write(tmp_path, "curve-4", _result(4, 40, cpu=2.0, rss=[9, 9, 9], series=0))
    # An incomplete supplement and one of another size are not used; the complete one is.
    _write(tmp_path, "curve-4-a", _result(4, 40, cpu=9.0, rss=[1, 1, 1], series=3))
    _write(tmp_path, "curve-4-b", _result(4, 41, cpu=9.0, rss=[1, 1, 1]))
    _write(tmp_path, "curve-4-c", _result(4, 40, cpu=9.0, rss=[1, 1, 1]))
    points = load_points(tmp_path)
    assert [p.name for p in points] == ["curve-1", "curve-4"]  # supplements are not points
    four = points[1]
    assert (four.cpu_seconds, four.text_mib, four.exposition_from) == (2.0, 40.0, "curve-4-c")
    table = curve_table(points, fits(points))
    assert "| 40.0 MiB (1) | 0.04 MiB (1) |" in table
    assert "(1) 4 groups: exposition from `curve-4-c.json`" in table
