"""``python -m bench run|soak|sharding|compare|report|codecs|evaluation``: docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.harness import RunOptions, main_log, run_preset, write_result
from bench.scenario import PRESETS, ScenarioSpec, preset
from klag_pipeline.settings.durations import parse_duration

DEFAULT_POLL_SECONDS = {"small": 2.0, "medium": 5.0, "large": 10.0, "xlarge": 30.0}
"""Long enough that a cold cycle fits (a cycle never outlives poll_interval), short enough for
≥ 10 steady cycles in a few minutes."""

SOAK_POLL_SECONDS = 0.5
"""1,000 soak cycles of the small preset in ~10 minutes."""


def _scenario_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--topics", type=int)
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--groups", type=int)
    parser.add_argument("--empty-groups", type=int)
    parser.add_argument("--live-groups", type=int)
    parser.add_argument("--topics-per-group", type=int)
    parser.add_argument("--records-per-partition", type=int)
    parser.add_argument("--distinct-offsets", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--poll-interval", help='e.g. "5s" (default per preset)')
    parser.add_argument("--name", help="results file name (default: the preset)")


def _spec(args: argparse.Namespace) -> ScenarioSpec:
    return preset(
        args.preset,
        topics=args.topics,
        partitions=args.partitions,
        groups=args.groups,
        empty_groups=args.empty_groups,
        live_groups=args.live_groups,
        topics_per_group=args.topics_per_group,
        records_per_partition=args.records_per_partition,
        distinct_offsets=args.distinct_offsets,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure one preset, write bench/results/<name>.json")
    _scenario_arguments(run)
    run.add_argument("--warm-cycles", type=int, default=12)
    run.add_argument("--scrapers", type=int, default=20)
    run.add_argument("--no-timestamps", action="store_true", help="time lag off")
    run.add_argument("--no-health", action="store_true", help="[exporter.health] off")
    run.add_argument("--granularity", choices=("partition", "topic"), default="partition")
    run.add_argument("--profile-dir", type=Path, help="py-spy collapsed stacks per phase")
    run.add_argument(
        "--exporter-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the exporter process (repeatable)",
    )
    soak = commands.add_parser("soak", help="many cycles with churn; RSS and fds must stay flat")
    _scenario_arguments(soak)
    soak.add_argument("--cycles", type=int, default=1000)
    soak.add_argument("--churn-every", type=int, default=5, help="churn every N cycles")
    sharding = commands.add_parser(
        "sharding", help="1, 2, 4… sharded replicas on one scenario (issue 15)"
    )
    _scenario_arguments(sharding)
    sharding.add_argument("--replicas", default="1,2,4", help="comma-separated counts")
    sharding.add_argument("--warm-cycles", type=int, default=6)
    sharding.add_argument("--no-timestamps", action="store_true", help="time lag off")
    compare = commands.add_parser(
        "compare", help="klag-pipeline beside peer exporters on one broker (issue 17)"
    )
    _scenario_arguments(compare)
    compare.add_argument("--peers", default="klag-exporter,kminion,kafka_exporter")
    compare.add_argument("--cycles", type=int, default=8, help="poll intervals per exporter")
    compare.add_argument(
        "--binary", action="append", default=[], metavar="NAME=PATH", help="a peer's executable"
    )
    commands.add_parser("report", help="regenerate the table in docs/benchmarks.md")
    codecs = commands.add_parser(
        "codecs", help="decode cost of real answers, ours vs kio; bench/results/codecs.json"
    )
    codecs.add_argument("--preset", choices=sorted(PRESETS), default="large")
    codecs.add_argument("--capture", action="store_true", help="capture frames even if saved")
    codecs.add_argument("--runs", type=int, default=50)
    codecs.add_argument("--kio-site", type=Path, help="site-packages where kio is installed")
    evaluation = commands.add_parser(
        "evaluation", help="CPU and memory of the health evaluation; bench/results/evaluation.json"
    )
    evaluation.add_argument("--preset", choices=sorted(PRESETS), default="large")
    evaluation.add_argument("--cycles", type=int, default=40, help="≥ 32 fills the 300 s window")
    args = parser.parse_args(argv)
    # aiokafka logs retried produce errors while fresh topics elect leaders: noise here.
    logging.basicConfig(level=logging.ERROR)

    if args.command == "report":
        from bench.report import write_report

        main_log(f"wrote {write_report()}")
        return 0
    if args.command == "codecs":
        from bench.codecs import main as codecs_main

        return codecs_main(args)
    if args.command == "evaluation":
        from bench.evaluation import main as evaluation_main

        return evaluation_main(args)
    spec = _spec(args)
    if args.poll_interval:
        poll = parse_duration(args.poll_interval)
    elif args.command == "soak":
        poll = SOAK_POLL_SECONDS
    else:
        poll = DEFAULT_POLL_SECONDS[args.preset]
    if args.command == "sharding":
        from bench.sharding import run_sharding

        counts = [int(n) for n in args.replicas.split(",")]
        options = RunOptions(
            poll_interval=poll,
            warm_cycles=args.warm_cycles,
            timestamp_sampling=not args.no_timestamps,
        )
        result = asyncio.run(run_sharding(spec, counts, options, main_log))
        main_log(f"wrote {write_result(result, args.name or f'sharding-{args.preset}')}")
        return 0
    if args.command == "compare":
        from bench.peers.build import parse_binaries
        from bench.peers.compare import run_compare

        peers = [p for p in args.peers.split(",") if p]
        result = asyncio.run(
            run_compare(
                spec, RunOptions(poll_interval=poll), peers, parse_binaries(args.binary),
                args.cycles, main_log,
            )
        )  # fmt: skip
        main_log(f"wrote {write_result(result, args.name or f'compare-{args.preset}')}")
        return 0
    if args.command == "run":
        options = RunOptions(
            poll_interval=poll,
            warm_cycles=args.warm_cycles,
            scrapers=args.scrapers,
            timestamp_sampling=not args.no_timestamps,
            health=not args.no_health,
            granularity=args.granularity,
            profile_dir=args.profile_dir,
            exporter_env=tuple(
                (name, value) for name, _, value in (e.partition("=") for e in args.exporter_env)
            ),
        )
        result = asyncio.run(run_preset(spec, options, main_log))
        main_log(f"wrote {write_result(result, args.name or args.preset)}")
        return 0
    from bench.soak import run_soak

    result = asyncio.run(run_soak(spec, poll, args.cycles, args.churn_every, main_log))
    main_log(f"wrote {write_result(result, args.name or f'soak-{args.preset}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
