"""The stage contract and the typed chain builder.

A :class:`Stage` turns one event into the next (``Stage[In, Out]``). A :class:`Chain` is built
one stage at a time with :meth:`Chain.then`, which only accepts a stage whose input type is the
chain's current output type: a mismatched stage is a mypy error at the wiring point, not a
``TypeError`` in a running cycle. The links inside a chain are stored type-erased
(``Link[Any, Any]``) because a tuple cannot carry a different type per position; ``then`` is the
only way to add one, so the erasure is never observable.

A chain is itself a stage (``process`` runs its stages in turn: the ``once`` command), and
:meth:`Chain.wire` puts a bounded channel between every two stages (the exporter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from klag_pipeline.pipeline.channel import Channel

In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


class Stage(Protocol[In, Out]):
    """One step of a cluster's cycle: ``name`` (metrics, logs) and ``process``.

    ``process`` raises a :class:`klag_pipeline.errors.KlagError` for an expected failure (the
    cycle is dropped and reported); anything else is a bug."""

    @property
    def name(self) -> str: ...

    async def process(self, event: In) -> Out: ...


@dataclass(frozen=True, slots=True)
class Link(Generic[A, B]):
    """One stage between its two channels, ready for :func:`klag_pipeline.stages.loop.run_stage`."""

    stage: Stage[A, B]
    inbox: Channel[A]
    outbox: Channel[B]


@dataclass(frozen=True, slots=True)
class WiredChain(Generic[A, B]):
    """A chain with its channels: feed ``inbox``, read ``outbox``, run every link."""

    inbox: Channel[A]
    links: tuple[Link[Any, Any], ...]
    outbox: Channel[B]

    @property
    def channels(self) -> tuple[Channel[Any], ...]:
        return (self.inbox, *(link.outbox for link in self.links))


class Chain(Generic[A, B]):
    """Stages from ``A`` to ``B``. Start with :meth:`of`, extend with :meth:`then`."""

    __slots__ = ("_stages",)

    def __init__(self, stages: tuple[Stage[Any, Any], ...]) -> None:
        # Private: only of/then/replace_first build a chain, so the types line up.
        self._stages = stages

    @staticmethod
    def of(stage: Stage[A, B]) -> Chain[A, B]:
        return Chain((stage,))

    def then(self, stage: Stage[B, C]) -> Chain[A, C]:
        return Chain((*self._stages, stage))

    def replace_first(self, wrap: Callable[[Stage[A, Any]], Stage[A, Any]]) -> Chain[A, B]:
        """The same chain with its first stage wrapped (e.g. the standby gate)."""
        return Chain((wrap(self._stages[0]), *self._stages[1:]))

    @property
    def name(self) -> str:
        return "+".join(stage.name for stage in self._stages)

    @property
    def stages(self) -> tuple[Stage[Any, Any], ...]:
        return self._stages

    async def process(self, event: A) -> B:
        """Run every stage in turn on one event (no channels, no concurrency)."""
        result: Any = event
        for stage in self._stages:
            result = await stage.process(result)
        return result  # type: ignore[no-any-return]  # then() proved the last stage yields B

    def wire(self, inbox: Channel[A], capacity: int, prefix: str) -> WiredChain[A, B]:
        """A bounded channel (``capacity``, named ``<prefix>.<stage>``) after every stage."""
        links: list[Link[Any, Any]] = []
        current: Channel[Any] = inbox
        for stage in self._stages:
            outbox: Channel[Any] = Channel(capacity, f"{prefix}.{stage.name}")
            links.append(Link(stage, current, outbox))
            current = outbox
        return WiredChain(inbox, tuple(links), current)
