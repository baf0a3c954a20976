"""The status rule table (docs/health.md), as pure functions of a partition's observations.

Rules, first match wins, for one (group, topic, partition) over the window (oldest first):

| # | condition | status |
|---|---|---|
| 1 | fewer than two observations | UNKNOWN |
| 2 | the committed offset moved backwards between two observations of the window | REWOUND |
| 3 | lag now is 0 (consumable lag where known: transaction markers do not count) | OK |
| 4 | no members, but the commit moved in the window and age < ``stopped_after`` | rules 10–12 |
| 5 | no members, lag grew across the window | STOPPED |
| 6 | no members, commits older than ``stopped_after`` | STOPPED |
| 7 | no members, commit not yet seen moving, seen for less than ``stopped_after`` | UNKNOWN |
| 8 | no members otherwise (a batch consumer between runs, on a quiet topic) | OK |
| 9 | members present, commits older than ``stalled_after`` | STALLED |
| 10 | members present, commit not yet seen moving, seen for less than ``stalled_after`` | UNKNOWN |
| 11 | lag grew: last > first, and the later half's lags all above the earlier half's | LAGGING |
| 12 | otherwise | OK |

Why these get right what Burrow gets wrong: status is decided on the *current* lag and the
commit age, never on "lag was 0 once in the window" (a group that caught up and then stopped is
STOPPED once lag grows or its commits age); a caught-up group on an idle topic is OK by rule 3
whatever its commits do; a quiet topic cannot make a group STALLED because rule 9 needs lag > 0
(records waiting) *and* a committed offset that has not moved for ``stalled_after``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeVar

from klag_pipeline.health.model import NO_RATES, STANDING, Rates, Status


class Observation(NamedTuple):
    """One cycle's values of a (group, topic, partition): ``at`` in unix seconds. (A tuple, not
    a dataclass: 20,000 are made per cycle at the large preset, and a tuple is made fastest.)

    The rules read any :data:`Point` by index (:data:`AT` …), so the evaluator keeps plain
    tuples: the cyclic GC stops tracking an exact tuple of numbers, never a named tuple, and
    320,000 tracked observations at the large preset made each full collection ~0.35 s (a
    stall of the event loop, since the collection holds the GIL)."""

    at: float
    committed: int
    high: int
    lag: int  # the lag the rules judge: consumable lag where known, else offset lag


Point = tuple[float, int, int, int]
"""An observation as the evaluator stores it: (at, committed, high, lag)."""
AT: Final = 0
COMMITTED: Final = 1
HIGH: Final = 2
LAG: Final = 3

W = TypeVar("W")
"""A window of observations in the form its keeper stores it (:func:`status_between`)."""


class Rewind(NamedTuple):
    """The committed offset moved backwards at ``at``, from ``before`` to ``after``."""

    at: float
    before: int
    after: int


@dataclass(frozen=True, slots=True)
class Thresholds:
    stalled_after: float
    stopped_after: float


def rates(observations: Sequence[Point]) -> Rates:
    """Rates from the oldest to the newest observation; None with fewer than two (or no time
    between them)."""
    if len(observations) < 2:
        return NO_RATES
    return rates_between(observations[0], observations[-1])


def rates_between(first: Point, last: Point) -> Rates:
    """:func:`rates` of a window of two or more observations, given its oldest and newest."""
    span = last[AT] - first[AT]
    if span <= 0:
        return NO_RATES
    consumed = last[COMMITTED] - first[COMMITTED]
    produced = last[HIGH] - first[HIGH]
    grown = last[LAG] - first[LAG]
    if not (consumed or produced or grown):
        return STANDING  # an idle row (a common one): no new tuple and floats every cycle
    return Rates(consume=consumed / span, produce=produced / span, lag_velocity=grown / span)


def catch_up_seconds(lag: int, observed: Rates) -> float | None:
    """Seconds until the lag is consumed at current rates: 0 with no lag, +inf when the consumer
    does not gain on the producer, None when the rates are unknown."""
    if lag <= 0:
        return 0.0
    if observed.consume is None or observed.produce is None:
        return None
    gain = observed.consume - observed.produce
    return lag / gain if gain > 0 else float("inf")


def _grew_beyond_noise(observations: Sequence[Point]) -> bool:
    """Every lag of the window's later half is above every lag of its earlier half (halves by
    time). A live consumer's lag wobbles (3, 5, 2, 4) without a trend; one falling behind rises
    through its wobble (100, 130, 125, 170, 160, 210). One pass: it runs for every growing row."""
    middle = (observations[0][AT] + observations[-1][AT]) / 2
    early_max = -1
    late_min: int | None = None
    for o in observations:
        if o[AT] <= middle:
            early_max = max(early_max, o[LAG])
        elif late_min is None or o[LAG] < late_min:
            late_min = o[LAG]
    return late_min is not None and late_min > early_max


NO_REWIND: Final = Rewind(0.0, 0, 0)
"""Passed as ``rewound`` by a caller that tracked rewinds and found none in the window."""


def rewind_in(observations: Sequence[Point]) -> Rewind | None:
    """The last backward step of the committed offset between two observations, if any."""
    found = None
    for before, after in itertools.pairwise(observations):
        if after[COMMITTED] < before[COMMITTED]:
            found = Rewind(after[AT], before[COMMITTED], after[COMMITTED])
    return found


def partition_status(
    observations: Sequence[Point],
    *,
    members: bool,
    commit_age: float,
    seen_moving: bool,
    thresholds: Thresholds,
    rewound: Rewind | None = None,
) -> tuple[Status, str]:
    """The status of one partition and its reason (see the table at the top).

    ``commit_age``: seconds since the committed offset last moved, or since it was first seen
    when it has not moved since (``seen_moving`` False). ``rewound``: the last backward step
    within the window, as the caller tracked it while appending (O(1) per cycle); without it the
    observations are scanned (:func:`rewind_in`)."""
    if len(observations) < 2:
        return too_few(len(observations))
    if rewound is None:
        rewound = rewind_in(observations) or NO_REWIND
    return status_between(
        observations[0],
        observations[-1],
        observations,
        _grew_beyond_noise,
        members=members,
        commit_age=commit_age,
        seen_moving=seen_moving,
        thresholds=thresholds,
        rewound=rewound,
    )


def too_few(count: int) -> tuple[Status, str]:
    """Rule 1: the status of a window of fewer than two observations."""
    return Status.UNKNOWN, f"{count} of 2 observations needed"


def status_between(
    first: Point,
    last: Point,
    window: W,
    grew_beyond_noise: Callable[[W], bool],
    *,
    members: bool,
    commit_age: float,
    seen_moving: bool,
    thresholds: Thresholds,
    rewound: Rewind,
) -> tuple[Status, str]:
    """Rules 2–12 for a window of two or more observations, given its oldest and newest, the
    last rewind within it (:data:`NO_REWIND` for none), and how to tell from ``window`` — in
    whatever form the caller keeps it — whether its lag grew beyond noise (read only for rule
    11: the one rule that needs more than the window's two ends)."""
    if rewound is not NO_REWIND:
        return Status.REWOUND, (
            f"committed offset moved back from {rewound.before} to {rewound.after}"
        )
    if last[LAG] <= 0:
        return Status.OK, "caught up"
    grew = last[LAG] > first[LAG]
    age = round(commit_age)
    # A group without members whose commits moved within the window and recently is consumed
    # from outside group management (Flink, Spark, assign()): judged like a member (rules
    # 10–12), not as stopped.
    unmanaged = (
        not members
        and first[COMMITTED] != last[COMMITTED]
        and commit_age < thresholds.stopped_after
    )
    if not members and not unmanaged:
        if grew:
            return Status.STOPPED, f"no members; lag grew from {first[LAG]} to {last[LAG]}"
        if commit_age >= thresholds.stopped_after:
            return Status.STOPPED, f"no members; lag {last[LAG]}; no commit for {age}s"
        if not seen_moving:
            return Status.UNKNOWN, f"no members; lag {last[LAG]}; watched {age}s so far"
        return Status.OK, f"no members; lag {last[LAG]} steady; last commit {age}s ago"
    if not unmanaged and commit_age >= thresholds.stalled_after:
        return Status.STALLED, (
            f"committed offset {last[COMMITTED]} unchanged for {age}s with lag {last[LAG]}"
        )
    if not seen_moving:
        return Status.UNKNOWN, f"lag {last[LAG]}; commit not seen moving in {age}s so far"
    if grew and grew_beyond_noise(window):
        return Status.LAGGING, f"lag grew from {first[LAG]} to {last[LAG]}"
    return Status.OK, "consuming"


def worst(statuses: Sequence[Status]) -> Status:
    """A group's status from its partitions': the most severe known one; UNKNOWN only when
    nothing is known."""
    known = [s for s in statuses if s is not Status.UNKNOWN]
    return max(known) if known else Status.UNKNOWN
