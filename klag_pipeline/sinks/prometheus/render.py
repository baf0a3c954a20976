"""Rendering of the compatibility families to exposition text (SPEC §4, §6), from the catalog.

Which families exist, their order, ``# HELP`` / ``# TYPE`` text, label set and the snapshot field
each one reads all come from :mod:`klag_pipeline.metrics_catalog`; this module only knows how to
spell each label set's series. Every snapshot is rendered once, off the event loop, into
per-cluster chunks (one string of sample lines per family), which :func:`assemble` joins family by
family under their headers. Chunks and headers are kept compressed, as deflate segments
(:mod:`.deflate`): a family's text exists only while it is being rendered.

The consumer health families (``CONSUMER_FAMILIES``) are rendered from ``snapshot.health`` only
when it is not None, so a snapshot without health renders exactly as before they existed. Their
one counter has a ``# TYPE`` line that differs between the formats (text 0.0.4 names the family
``…_total``, OpenMetrics without the suffix), so :func:`assemble` leaves it out and
:func:`assemble_counters` renders it per format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Final

from klag_pipeline.exposition import escape_label_value, format_value, header
from klag_pipeline.metrics_catalog import (
    CLUSTER_FAMILIES,
    CONSUMER_FAMILIES,
    GPM,
    GPM_FLAGS,
    GT,
    C,
    Family,
    G,
    LabelSet,
    P,
    Source,
)
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import Granularity
from klag_pipeline.sinks.prometheus.deflate import Segment, deflate, text
from klag_pipeline.snapshot import ClusterSnapshot, PartitionRow

COUNTERS: Final = tuple(f for f in CONSUMER_FAMILIES if f.kind == "counter")
"""The snapshot families whose header depends on the format; after every other family."""
_HEADERS: Final[Mapping[str, Segment]] = MappingProxyType(
    {
        family.name: deflate(header(family).encode())
        for family in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES)
        if family not in COUNTERS
    }
)
"""Family name → compressed header of the gauges, in exposition order."""


def counter_header(family: Family, openmetrics: bool) -> str:
    """OpenMetrics names a counter family without ``_total`` (its samples keep it); text 0.0.4
    uses the sample name, as prometheus_client's own text exposition does."""
    name = family.name.removesuffix("_total") if openmetrics else family.name
    return f"# HELP {name} {family.help}\n# TYPE {name} counter\n"


_COUNTER_HEADERS: Final = MappingProxyType(
    {
        om: tuple((f.name, deflate(counter_header(f, om).encode())) for f in COUNTERS)
        for om in (False, True)
    }
)

ClusterChunks = Mapping[str, Segment]
"""One cluster's rendered sample lines (UTF-8, compressed) per family name; families without
samples are absent."""


def _plan(source: Source, labels: LabelSet) -> tuple[Family, ...]:
    families = (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES)
    return tuple(f for f in families if f.source == source and f.labels == labels)


# The families of each (source, label set) this module knows how to label; a catalog entry with
# another combination fails at import (below) rather than silently never being rendered.
_PARTITION: Final = _plan("partition", P)
_ROW: Final = _plan("row", GPM)
_ROW_FLAGGED: Final = _plan("row", GPM_FLAGS)
_GROUP: Final = _plan("group", G)
_GROUP_TOPIC: Final = _plan("group", GT)
_CLUSTER: Final = _plan("cluster", C)
_PRODUCE_RATE: Final = _plan("produce_rate", P)
_PARTITION_HEALTH: Final = _plan("partition_health", GPM)
_TOPIC_HEALTH: Final = _plan("topic_health", GT)
_GROUP_HEALTH: Final = _plan("group_health", G)
_UNPLANNED = set((*CLUSTER_FAMILIES, *CONSUMER_FAMILIES)).difference(
    _PARTITION,
    _ROW,
    _ROW_FLAGGED,
    _GROUP,
    _GROUP_TOPIC,
    _CLUSTER,
    _PRODUCE_RATE,
    _PARTITION_HEALTH,
    _TOPIC_HEALTH,
    _GROUP_HEALTH,
)
if _UNPLANNED:
    raise ImportError(f"no Prometheus rendering for {sorted(f.name for f in _UNPLANNED)}")


def label_template(constant: Mapping[str, str], variable: Iterable[str]) -> str:
    """A ``str.format`` template of a sorted label set: constants inlined, variables as fields."""
    items = {name: escape_label_value(value) for name, value in constant.items()}
    items.update({name: "{" + name + "}" for name in variable})
    parts = []
    for name in sorted(items):
        value = items[name]
        if name in constant:
            value = value.replace("{", "{{").replace("}", "}}")
        parts.append(f'{name}="{value}"')
    return ",".join(parts)


def cluster_label_text(cluster: str, labels: Mapping[str, str]) -> str:
    """The sorted, escaped label text of a C-family series of ``cluster``."""
    return label_template({**labels, "cluster_name": cluster}, ()).format()


def _variable(labels: LabelSet) -> tuple[str, ...]:
    """The labels filled per series (``cluster_name`` is a constant of the cluster)."""
    return tuple(name for name in labels.names if name != "cluster_name")


_FLAG = {True: "true", False: "false"}

CYCLE_FIELDS: Final = frozenset({"duration_seconds", "poll_time_ms", "compaction_detected_count"})
"""Snapshot fields only a finished cycle knows (its duration, its broker time, and compaction,
which the timestamp pass detects): a partial snapshot (``ClusterSnapshot.partial``, the early
publication of a first cycle) leaves their families out rather than show a made-up value."""


@dataclass(slots=True)
class RenderMemory:
    """What one cluster's render leaves for its next one (the sink keeps one per cluster).

    Between two cycles most of a cluster's series keep their labels and many keep their values
    (idle and caught-up groups, earliest offsets, states, flags). So each family's segment is
    kept with the heads and the values it was rendered from, and the next render reuses it
    when both are equal and the values have the same types (equal values of one type spell the
    same; ``1 == 1.0`` alone would not be enough). Label heads are reused per label set while
    the identity columns they are built from (``(group, topic, partition, member…)`` per row,
    ``(topic, partition)``, ``group``) are unchanged. The cost: the previous values and heads
    stay referenced between renders (a few MB at 20,000 rows).
    """

    constant: Mapping[str, str] = field(default_factory=dict)
    heads: dict[str, tuple[list[Any], list[str]]] = field(default_factory=dict)
    """Label set → the identity column the heads were built from, and the heads."""
    group_topic_heads: dict[tuple[str, str], str] = field(default_factory=dict)
    flag_heads: dict[tuple[str, bool, bool], str] = field(default_factory=dict)
    """(row head, compaction, data loss) → the head of the flagged label set."""
    families: dict[str, tuple[object, list[Any], Segment | None]] = field(default_factory=dict)
    """Family → what it was rendered from (heads or a key), its values, and its segment (None:
    no sample)."""
    reused: int = 0
    """Families whose segment the last render reused (for tests and profiles)."""


_ROW_IDENTITY: Final = attrgetter(
    "group", "topic", "partition", "member_host", "consumer_id", "client_id"
)
_PARTITION_IDENTITY: Final = attrgetter("topic", "partition")
_GROUP_IDENTITY: Final = attrgetter("group")


def render_cluster(
    snapshot: ClusterSnapshot, granularity: Granularity, memory: RenderMemory | None = None
) -> ClusterChunks:
    """Render one cluster's samples, family by family (pure but for ``memory``, which it reads
    and replaces; safe to run in a worker thread).

    Each family's lines are joined, encoded and compressed before the next family is built, so
    at most one family's text (a few MB at 20,000 rows) exists at a time next to the finished,
    compressed chunks. With ``memory`` (the previous render of the same cluster), families whose
    heads and values did not change reuse their segment (:class:`RenderMemory`).
    """
    constant = {**snapshot.labels, "cluster_name": snapshot.cluster}
    previous = memory if memory is not None and memory.constant == constant else RenderMemory()
    kept = RenderMemory(constant)
    escaped_memo: dict[str, str] = {}
    chunks: dict[str, Segment] = {}
    sampling = snapshot.timestamp_sampling
    partial = snapshot.partial

    def esc(value: str) -> str:
        escaped = escaped_memo.get(value)
        if escaped is None:
            escaped = escaped_memo[value] = escape_label_value(value)
        return escaped

    def wanted(family: Family) -> bool:
        return (
            granularity in family.granularities
            and (sampling or not family.needs_sampling)
            and not (partial and family.field in CYCLE_FIELDS)
        )

    def label_heads(
        label_set: str, identity: list[Any], build: Callable[[], list[str]]
    ) -> list[str]:
        """The heads of ``label_set``: the previous render's while ``identity`` is unchanged."""
        before = previous.heads.get(label_set)
        heads = before[1] if before is not None and before[0] == identity else build()
        kept.heads[label_set] = (identity, heads)
        return heads

    def emit(
        name: str,
        heads: Sequence[str] | Callable[[], Sequence[str]],
        values: Iterable[float | None],
        key: object = None,
    ) -> None:
        """One family from each series' ``{labels} `` head and its value, aligned; a series
        whose value is None is left out. Values come as a column (``map`` of a getter over the
        rows, in C), so the one Python-level step per sample is this line. Integers print as
        they are (``format_value`` would too, at the cost of a call). Heads may be a builder
        (called only when the family is rendered), with ``key`` standing for them."""
        column = values if isinstance(values, list) else list(values)
        rendered_from = heads if key is None else key
        before = previous.families.get(name)
        if (
            before is not None
            and before[0] == rendered_from
            and before[1] == column
            and list(map(type, before[1])) == list(map(type, column))
        ):
            segment = before[2]
            kept.reused += 1
        else:
            lines = heads() if callable(heads) else heads
            chunk = "".join(
                [
                    f"{name}{head}{value if type(value) is int else format_value(value)}\n"
                    for head, value in zip(lines, column, strict=True)
                    if value is not None
                ]
            ).encode()
            segment = deflate(chunk) if chunk else None
        kept.families[name] = (rendered_from, column, segment)
        if segment is not None:
            chunks[name] = segment

    partitions = snapshot.partitions
    p_tmpl = label_template(constant, _variable(P))
    p_heads = label_heads(
        "partition",
        list(map(_PARTITION_IDENTITY, partitions)),
        lambda: [
            f"{{{p_tmpl.format(topic=esc(po.topic), partition=po.partition)}}} "
            for po in partitions
        ],
    )
    for family in filter(wanted, _PARTITION):
        emit(family.name, p_heads, map(attrgetter(family.field), partitions))
    health = snapshot.health
    if health is not None:
        rates = health.produce_rates
        for family in filter(wanted, _PRODUCE_RATE):
            emit(
                family.name,
                p_heads,
                [rates.get(TopicPartition(po.topic, po.partition)) for po in partitions],
            )

    row_families = [f for f in _ROW if wanted(f)]
    flagged_families = [f for f in _ROW_FLAGGED if wanted(f)]
    health_families = [f for f in _PARTITION_HEALTH if wanted(f)] if health is not None else []
    if row_families or flagged_families or health_families:
        rows = snapshot.rows
        gpm_tmpl = label_template(constant, _variable(GPM))
        flags_tmpl = label_template(constant, _variable(GPM_FLAGS))

        def fields(row: PartitionRow) -> dict[str, str | int]:
            return {
                "group": esc(row.group),
                "topic": esc(row.topic),
                "partition": row.partition,
                "member_host": esc(row.member_host),
                "consumer_id": esc(row.consumer_id),
                "client_id": esc(row.client_id),
            }

        heads = label_heads(
            "row",
            list(map(_ROW_IDENTITY, rows)),
            lambda: [f"{{{gpm_tmpl.format_map(fields(row))}}} " for row in rows],
        )

        flags_before, flags_kept = previous.flag_heads, kept.flag_heads

        def flag_head(i: int, compaction: bool, loss: bool) -> str:
            """Row ``i``'s head with the flags, the last render's while its row head is the same."""
            key = (heads[i], compaction, loss)
            head = flags_before.get(key)
            if head is None:
                head = (
                    "{"
                    + flags_tmpl.format(
                        **fields(rows[i]),
                        compaction_detected=_FLAG[compaction],
                        data_loss_detected=_FLAG[loss],
                    )
                    + "} "
                )
            flags_kept[key] = head
            return head

        # The flagged label set interleaves the two flags (labels are sorted), so only the rows
        # with a value get a head; the key (row heads, and each such row's index and flags)
        # stands for those heads, which are built only if the family is rendered.
        for family in flagged_families:
            get = attrgetter(family.field)
            flagged = [
                (i, row.compaction_detected, row.data_loss_detected, value)
                for i, row in enumerate(rows)
                if (value := get(row)) is not None
            ]

            def flagged_heads(flagged: list[tuple[int, bool, bool, float]] = flagged) -> list[str]:
                return [flag_head(i, compaction, loss) for i, compaction, loss, _ in flagged]

            emit(
                family.name,
                flagged_heads,
                [value for *_, value in flagged],
                key=(heads, [(i, c, d) for i, c, d, _ in flagged]),
            )
            del flagged
        for family in row_families:
            emit(family.name, heads, map(attrgetter(family.field), rows))
        if health is not None and health_families:
            by_row = health.partitions
            evaluated = [
                (head, found)
                for head, row in zip(heads, rows, strict=True)
                if (found := by_row.get((row.group, row.topic_partition))) is not None
            ]
            e_heads = [head for head, _ in evaluated]
            e_health = [found for _, found in evaluated]
            del evaluated
            for family in health_families:
                # Statuses (IntEnum) and flags (bool) print as numbers through format_value.
                emit(family.name, e_heads, map(attrgetter(family.field), e_health))
            del e_heads, e_health

    groups = snapshot.groups
    g_tmpl = label_template(constant, _variable(G))
    gt_tmpl = label_template(constant, _variable(GT))
    g_heads = label_heads(
        "group",
        list(map(_GROUP_IDENTITY, groups)),
        lambda: [f"{{{g_tmpl.format(group=esc(summary.group))}}} " for summary in groups],
    )
    for family in filter(wanted, _GROUP):
        emit(family.name, g_heads, map(attrgetter(family.field), groups))

    gt_before, gt_kept = previous.group_topic_heads, kept.group_topic_heads

    def group_topic_head(group: str, topic: str) -> str:
        head = gt_kept.get((group, topic))
        if head is None:
            head = gt_before.get((group, topic))
            if head is None:
                head = f"{{{gt_tmpl.format(group=esc(group), topic=esc(topic))}}} "
            gt_kept[(group, topic)] = head
        return head

    for family in filter(wanted, _GROUP_TOPIC):
        get = attrgetter(family.field)
        pairs = [(gs.group, topic, lag) for gs in groups for topic, lag in sorted(get(gs).items())]
        emit(
            family.name,
            [group_topic_head(group, topic) for group, topic, _ in pairs],
            [lag for _, _, lag in pairs],
        )
    if health is not None:
        present = [
            (head, gh)
            for head, gs in zip(g_heads, groups, strict=True)
            if (gh := health.groups.get(gs.group)) is not None
        ]
        present_heads = [head for head, _ in present]
        for family in filter(wanted, _GROUP_HEALTH):
            emit(family.name, present_heads, map(attrgetter(family.field), (g for _, g in present)))
        # Every evaluated group-topic, abandoned ones too: with drop_abandoned they have left
        # the lag families, but their health series stay (docs/health.md).
        topic_health = sorted(health.topics.items())
        t_heads = [group_topic_head(group, topic) for (group, topic), _ in topic_health]
        t_health = [th for _, th in topic_health]
        for family in filter(wanted, _TOPIC_HEALTH):
            emit(family.name, t_heads, map(attrgetter(family.field), t_health))

    c_head = f"{{{cluster_label_text(snapshot.cluster, snapshot.labels)}}} "
    for family in filter(wanted, _CLUSTER):
        emit(family.name, (c_head,), (attrgetter(family.field)(snapshot),))

    if memory is not None:
        for slot in RenderMemory.__slots__:
            setattr(memory, slot, getattr(kept, slot))
    return MappingProxyType(chunks)


def assemble(chunks_by_cluster: Mapping[str, ClusterChunks]) -> tuple[Segment, ...]:
    """The body's parts in order: each family's HELP/TYPE once, then its chunk of every cluster
    (in cluster-name order). The parts are the segments themselves, never copies. Without the
    counters (:func:`assemble_counters`), which follow them."""
    return _joined(chunks_by_cluster, _HEADERS.items())


def assemble_counters(
    chunks_by_cluster: Mapping[str, ClusterChunks], openmetrics: bool
) -> tuple[Segment, ...]:
    """Like :func:`assemble`, for the counters in one format."""
    return _joined(chunks_by_cluster, _COUNTER_HEADERS[openmetrics])


def _joined(
    chunks_by_cluster: Mapping[str, ClusterChunks], headers: Iterable[tuple[str, Segment]]
) -> tuple[Segment, ...]:
    clusters = [chunks_by_cluster[name] for name in sorted(chunks_by_cluster)]
    out: list[Segment] = []
    for family, family_header in headers:
        parts = [chunks[family] for chunks in clusters if family in chunks]
        if parts:
            out.append(family_header)
            out.extend(parts)
    return tuple(out)


def render_snapshots(snapshots: Sequence[ClusterSnapshot], granularity: Granularity) -> str:
    """The cluster families of ``snapshots`` in text format (for ``once``)."""
    chunks = {s.cluster: render_cluster(s, granularity) for s in snapshots}
    return text((*assemble(chunks), *assemble_counters(chunks, False))).decode()
