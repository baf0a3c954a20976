"""The alert rules under the real Prometheus rule engine: ``promtool check rules`` and
``promtool test rules`` with input series and the alerts they must (and must not) raise."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from devtools import tools

ROOT = Path(__file__).resolve().parents[2]
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yaml"

GPM = 'cluster_name="prod",topic="orders",partition="0",member_host="",consumer_id="",client_id=""'
JOB = 'job="klag-pipeline"'


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.tool_path("promtool")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def fires(eval_time: str, alert: str, *expected: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": eval_time, "alertname": alert, "exp_alerts": list(expected)}


def alert(labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description},
    }


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_alerts_fire_exactly_when_they_should(tmp_path: Path) -> None:
    data_loss = {
        "interval": "1m",
        "input_series": [
            series("kafka_consumergroup_group_messages_lost", f'{GPM},group="lossy"', "0 5x10"),
            series("kafka_consumergroup_group_messages_lost", f'{GPM},group="healthy"', "0x10"),
        ],
        "alert_rule_test": [
            # Pending, not firing yet: `for: 1m`.
            fires("1m", "KafkaConsumerGroupDataLoss"),
            fires(
                "3m",
                "KafkaConsumerGroupDataLoss",
                alert(
                    {
                        "severity": "critical",
                        "cluster_name": "prod",
                        "group": "lossy",
                        "topic": "orders",
                    },
                    "Consumer group lossy lost messages of topic orders to retention.",
                    "On cluster prod, retention deleted 5 messages of orders (largest "
                    "partition) that group lossy had not consumed: its committed offset is "
                    "below the partition's earliest offset.",
                ),
            ),
        ],
    }
    ratio = "kafka_consumergroup_group_lag_retention_ratio"
    lost = "kafka_consumergroup_group_messages_lost"
    near_data_loss = {
        "interval": "1m",
        "input_series": [
            series(ratio, f'{GPM},group="near"', "90x10"),
            series(lost, f'{GPM},group="near"', "0x10"),
            series(ratio, f'{GPM},group="fine"', "50x10"),
            series(lost, f'{GPM},group="fine"', "0x10"),
            # Already losing data: KafkaConsumerGroupDataLoss covers it, not this one.
            series(ratio, f'{GPM},group="lossy"', " ".join(["+Inf"] * 11)),
            series(lost, f'{GPM},group="lossy"', "3x10"),
        ],
        "alert_rule_test": [
            fires("4m", "KafkaConsumerGroupNearDataLoss"),
            fires(
                "6m",
                "KafkaConsumerGroupNearDataLoss",
                alert(
                    {
                        "severity": "warning",
                        "cluster_name": "prod",
                        "group": "near",
                        "topic": "orders",
                    },
                    "Consumer group near is close to losing messages of topic orders to retention.",
                    "On cluster prod, the lag of group near covers 90% of the retained "
                    "messages of orders; retention deletes the oldest unconsumed ones next.",
                ),
            ),
        ],
    }
    time_lag = {
        "interval": "1m",
        "input_series": [
            series(
                "kafka_consumergroup_group_max_lag_seconds",
                'cluster_name="prod",group="slow",environment="eu"',
                "400x10",
            ),
            series(
                "kafka_consumergroup_group_max_lag_seconds",
                'cluster_name="prod",group="fast"',
                "10x10",
            ),
        ],
        "alert_rule_test": [
            fires(
                "6m",
                "KafkaConsumerGroupTimeLagHigh",
                alert(
                    {"severity": "warning", "cluster_name": "prod", "group": "slow"},
                    "Consumer group slow is 6m 40s behind.",
                    "On cluster prod, the oldest message group slow has not consumed yet is "
                    "6m 40s old (threshold 300s).",
                ),
            ),
        ],
    }
    state = "kafka_consumergroup_group_state"
    sum_lag = "kafka_consumergroup_group_sum_lag"
    not_stable_description = (
        "On cluster prod, group {group} is in state {state} (0 Unknown, 1 PreparingRebalance, "
        "2 CompletingRebalance, 4 Dead, 5 Empty with lag, 6 Assigning, 7 Reconciling): it is "
        "rebalancing repeatedly or its consumers are gone while messages wait. An Empty group "
        "with no lag does not alert."
    )
    not_stable = {
        "interval": "1m",
        "input_series": [
            series(state, 'cluster_name="prod",group="rebalancing"', "1x20"),
            series(sum_lag, 'cluster_name="prod",group="rebalancing"', "0x20"),
            series(state, 'cluster_name="prod",group="abandoned"', "5x20"),
            series(sum_lag, 'cluster_name="prod",group="abandoned"', "10x20"),
            series(state, 'cluster_name="prod",group="idle-batch"', "5x20"),
            series(sum_lag, 'cluster_name="prod",group="idle-batch"', "0x20"),
            series(state, 'cluster_name="prod",group="stable"', "3x20"),
            series(sum_lag, 'cluster_name="prod",group="stable"', "100x20"),
        ],
        "alert_rule_test": [
            fires("14m", "KafkaConsumerGroupNotStable"),
            fires(
                "16m",
                "KafkaConsumerGroupNotStable",
                *(
                    alert(
                        {"severity": "warning", "cluster_name": "prod", "group": group},
                        f"Consumer group {group} has not been Stable for a while.",
                        not_stable_description.format(group=group, state=value),
                    )
                    for group, value in (("abandoned", 5), ("rebalancing", 1))
                ),
            ),
        ],
    }
    exporter_down = {
        "interval": "1m",
        "input_series": [
            series("up", f'{JOB},instance="10.0.0.1:8000"', "1 1 0 0 0 0 0"),
            series("up", f'{JOB},instance="10.0.0.2:8000"', "1x6"),
            series("up", 'job="other",instance="10.0.0.3:8000"', "0x6"),
        ],
        "alert_rule_test": [
            fires("3m", "KlagPipelineExporterDown"),
            fires(
                "5m",
                "KlagPipelineExporterDown",
                alert(
                    {"severity": "critical", "job": "klag-pipeline", "instance": "10.0.0.1:8000"},
                    "The klag-pipeline exporter cannot be scraped.",
                    "Prometheus has not scraped 10.0.0.1:8000 successfully (or has no target "
                    "at all); consumer lag is not being monitored.",
                ),
            ),
        ],
    }
    exporter_absent = {
        "interval": "1m",
        "input_series": [series("up", 'job="other",instance="10.0.0.3:8000"', "1x6")],
        "alert_rule_test": [
            fires(
                "3m",
                "KlagPipelineExporterDown",
                alert(
                    {"severity": "critical", "job": "klag-pipeline"},
                    "The klag-pipeline exporter cannot be scraped.",
                    "Prometheus has not scraped  successfully (or has no target at all); "
                    "consumer lag is not being monitored.",
                ),
            ),
        ],
    }

    def stale_alert(cluster: str) -> dict[str, Any]:
        return alert(
            {"severity": "warning", "job": "klag-pipeline", "cluster_name": cluster},
            f"klag-pipeline has no fresh data for Kafka cluster {cluster}.",
            f"No collection cycle of cluster {cluster} has succeeded within its staleness "
            "threshold on any exporter instance (klag_pipeline_cluster_up is 0; 0 from start-up "
            "until the first success): the cluster is unreachable, refuses the exporter, answers "
            "too slowly, or no instance is leader. Its series are withdrawn. See "
            f'klag_pipeline_stage_errors_total{{cluster_name="{cluster}"}} and the exporter\'s '
            "logs.",
        )

    cluster_up = "klag_pipeline_cluster_up"
    stale = {
        # Per cluster: prod goes down at 2m, "never" was never reached, dr stays fresh. HA: the
        # standby (b) collects nothing and reports 0 for every cluster, which must not count.
        "interval": "1m",
        "input_series": [
            series(cluster_up, f'{JOB},instance="a:8000",cluster_name="prod"', "1 1 0x10"),
            series(cluster_up, f'{JOB},instance="a:8000",cluster_name="dr",env="eu"', "1x12"),
            series(cluster_up, f'{JOB},instance="a:8000",cluster_name="never"', "0x12"),
            series(cluster_up, f'{JOB},instance="b:8000",cluster_name="prod"', "0x12"),
            series(cluster_up, f'{JOB},instance="b:8000",cluster_name="dr",env="eu"', "0x12"),
            series(cluster_up, f'{JOB},instance="b:8000",cluster_name="never"', "0x12"),
            # The compatibility gauge alone no longer alerts (it cannot name the cluster).
            series("kafka_lag_exporter_up", f'{JOB},instance="a:8000"', "0x12"),
        ],
        "alert_rule_test": [
            fires("4m", "KlagPipelineDataStale"),
            fires("6m", "KlagPipelineDataStale", stale_alert("never")),
            fires("8m", "KlagPipelineDataStale", stale_alert("never"), stale_alert("prod")),
        ],
    }
    standby_only_stale = {
        # HA: the standby reports 0 (it collects nothing), the leader 1 — nothing is stale.
        "interval": "1m",
        "input_series": [
            series(cluster_up, f'{JOB},instance="leader:8000",cluster_name="prod"', "1x12"),
            series(cluster_up, f'{JOB},instance="standby:8000",cluster_name="prod"', "0x12"),
        ],
        "alert_rule_test": [fires("10m", "KlagPipelineDataStale")],
    }
    # Consumer health (docs/health.md): synthetic series of the group-level families, shaped as
    # the exporter exports them. Codes: -1 UNKNOWN, 0 OK, 1 LAGGING, 2 REWOUND, 3 STALLED,
    # 4 STOPPED.
    status = "kafka_consumergroup_group_status"
    catch_up = "kafka_consumergroup_group_max_catch_up_seconds"
    abandoned = "kafka_consumergroup_group_topic_abandoned"
    velocity = "kafka_consumergroup_group_sum_lag_velocity"
    inf = " ".join(["+Inf"] * 31)

    def group(name: str, extra: str = "") -> str:
        return f'cluster_name="prod",group="{name}"{extra}'

    def stalled_alert(name: str) -> dict[str, Any]:
        return alert(
            {"severity": "critical", "cluster_name": "prod", "group": name},
            f"Consumer group {name} is stalled: it has members but commits nothing.",
            f"On cluster prod, group {name} has members and records waiting, but its committed "
            "offsets have not moved for stalled_after (health status 3 STALLED): its consumers "
            "are stuck (a hung poll loop, a poison message, a blocked downstream) and lag grows "
            "until they are fixed or restarted. "
            f'kafka_consumergroup_group_partition_status{{group="{name}"}} == 3 names the '
            "partitions.",
        )

    def stopped_alert(name: str) -> dict[str, Any]:
        return alert(
            {"severity": "warning", "cluster_name": "prod", "group": name},
            f"Consumer group {name} has stopped consuming.",
            f"On cluster prod, group {name} has no members while records wait, and its lag grew "
            "or its commits are older than stopped_after (health status 4 STOPPED): nothing "
            "consumes for it. Start its consumers, or delete the group if it is retired.",
        )

    stalled_stopped = {
        "interval": "1m",
        "input_series": [
            # Stalled from 2m on; a second series (another scrape label) must not split it.
            series(status, group("stuck"), "0 1 3x20"),
            series(status, group("stuck", ',environment="eu"'), "0 1 3x20"),
            series(status, group("gone"), "1 4x20"),
            # Stalled for 3 minutes, then recovers: never long enough to fire.
            series(status, group("blip"), "0 3 3 3 0x18"),
            series(status, group("healthy"), "0x22"),
            series(status, group("lagging"), "1x22"),
            series(status, group("rewound"), "2x22"),
            series(status, group("new"), "-1x22"),
        ],
        "alert_rule_test": [
            # `for: 5m` from 2m: pending at 6m, firing at 7m.
            fires("6m", "KafkaConsumerGroupStalled"),
            fires("7m", "KafkaConsumerGroupStalled", stalled_alert("stuck")),
            fires("7m", "KafkaConsumerGroupStopped"),
            # `for: 10m` from 1m.
            fires("10m", "KafkaConsumerGroupStopped"),
            fires("11m", "KafkaConsumerGroupStopped", stopped_alert("gone")),
            fires("20m", "KafkaConsumerGroupStalled", stalled_alert("stuck")),
        ],
    }

    def catch_up_alert(name: str, needs: str) -> dict[str, Any]:
        return alert(
            {"severity": "warning", "cluster_name": "prod", "group": name},
            f"Consumer group {name} is not catching up fast enough.",
            f"On cluster prod, at its current consume and produce rates group {name} needs "
            f"{needs} to work off its lag (threshold 3600s; +Inf: it consumes slower than "
            "records arrive and its lag grows). Add consumers or make them faster. Catch-up "
            "time is not time lag: see kafka_consumergroup_group_max_lag_seconds for how far "
            "behind it is.",
        )

    catch_up_too_slow = {
        "interval": "1m",
        "input_series": [
            # Never catches up (consumes slower than produced: lag grows) and is LAGGING.
            series(catch_up, group("never"), inf),
            series(status, group("never"), "1x30"),
            series(velocity, group("never"), "5x30"),
            # Keeps pace exactly with a small steady lag: +Inf catch-up, but lag is not
            # growing (velocity 0) — a healthy consumer, no alert.
            series(catch_up, group("steady"), inf),
            series(status, group("steady"), "0x30"),
            series(velocity, group("steady"), "0x30"),
            # Catching up, but in two hours; its status is OK (lag falling) and still alerts.
            series(catch_up, group("slow"), "7200x30"),
            series(status, group("slow"), "0x30"),
            # Healthy: OK and back within a minute.
            series(catch_up, group("healthy"), "60x30"),
            series(status, group("healthy"), "0x30"),
            # Exactly at the threshold is not above it.
            series(catch_up, group("borderline"), "3600x30"),
            series(status, group("borderline"), "1x30"),
            # STALLED and STOPPED have +Inf catch-up by construction; their own alerts cover them.
            series(catch_up, group("stuck"), inf),
            series(status, group("stuck"), "3x30"),
            series(catch_up, group("gone"), inf),
            series(status, group("gone"), "4x30"),
        ],
        "alert_rule_test": [
            fires("14m", "KafkaConsumerGroupCatchUpTooSlow"),
            fires(
                "16m",
                "KafkaConsumerGroupCatchUpTooSlow",
                catch_up_alert("never", "+Inf"),
                catch_up_alert("slow", "2h 0m 0s"),
            ),
        ],
    }

    def abandoned_alert(name: str, topic: str) -> dict[str, Any]:
        return alert(
            {"severity": "info", "cluster_name": "prod", "group": name, "topic": topic},
            f"Consumer group {name} has abandoned topic {topic}.",
            f"On cluster prod, group {name} is Stable with members, none of which is assigned "
            f"a partition of {topic}, and its commits there have not moved for abandoned_after: "
            f"its lag on {topic} is left over from an earlier subscription. Delete the group's "
            "offsets for the topic (kafka-consumer-groups --delete-offsets) or set "
            "[exporter.health] drop_abandoned = true.",
        )

    topic_abandoned = {
        "interval": "1m",
        "input_series": [
            series(abandoned, f'{group("migrated")},topic="orders-v1"', "0 1x10"),
            series(abandoned, f'{group("migrated")},topic="orders-v2"', "0x11"),
            series(abandoned, f'{group("healthy")},topic="orders"', "0x11"),
        ],
        "alert_rule_test": [
            fires("5m", "KafkaConsumerGroupTopicAbandoned"),
            fires(
                "6m",
                "KafkaConsumerGroupTopicAbandoned",
                abandoned_alert("migrated", "orders-v1"),
            ),
        ],
    }
    rules_test = {
        "rule_files": [str(ALERTS_FILE)],
        "evaluation_interval": "1m",
        "tests": [
            data_loss,
            near_data_loss,
            time_lag,
            not_stable,
            exporter_down,
            exporter_absent,
            stale,
            standby_only_stale,
            stalled_stopped,
            catch_up_too_slow,
            topic_abandoned,
        ],
    }
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(rules_test, sort_keys=False), "utf-8")

    result = promtool("test", "rules", str(test_file))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    # The harness can fail: a healthy group expected to alert is reported as a failure.
    rules_test = {
        "rule_files": [str(ALERTS_FILE)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series(
                        "kafka_consumergroup_group_messages_lost", f'{GPM},group="healthy"', "0x5"
                    )
                ],
                "alert_rule_test": [
                    fires(
                        "3m",
                        "KafkaConsumerGroupDataLoss",
                        {"exp_labels": {"severity": "critical", "group": "healthy"}},
                    )
                ],
            }
        ],
    }
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(rules_test, sort_keys=False), "utf-8")
    result = promtool("test", "rules", str(test_file))
    assert result.returncode != 0
    assert "KafkaConsumerGroupDataLoss" in result.stdout + result.stderr


def test_alerts_fire_once_across_sharded_replicas(tmp_path: Path) -> None:
    # Sharded mode (docs/deployment.md): three replicas, each exporting its own groups. During a
    # rebalance a group is exported by two replicas for a moment (with values observed at
    # slightly different times); a group also moves from one replica to another. Every
    # consumer-group alert fires exactly once per group (and topic), never per replica.
    def on(instance: str, labels: str) -> str:
        return f'{JOB},instance="{instance}:8000",{labels}'

    lost = "kafka_consumergroup_group_messages_lost"
    max_lag = "kafka_consumergroup_group_max_lag_seconds"
    state = "kafka_consumergroup_group_state"
    sum_lag = "kafka_consumergroup_group_sum_lag"
    status = "kafka_consumergroup_group_status"
    cluster_up = "klag_pipeline_cluster_up"
    data_loss = {
        "interval": "1m",
        "input_series": [
            # Exported by r1 and r2 at once (the overlap of a rebalance), for the whole test.
            series(lost, on("r1", f'{GPM},group="twice"'), "5x10"),
            series(lost, on("r2", f'{GPM},group="twice"'), "5x10"),
            # Moves from r1 to r3 at 4m (one overlapping scrape, then r1's series is stale).
            series(lost, on("r1", f'{GPM},group="moved"'), "7 7 7 7 7 stale"),
            series(lost, on("r3", f'{GPM},group="moved"'), "_ _ _ _ 7x6"),
            series(lost, on("r2", f'{GPM},group="healthy"'), "0x10"),
            series(lost, on("r3", f'{GPM},group="healthy"'), "0x10"),
        ],
        "alert_rule_test": [
            fires(
                when,
                "KafkaConsumerGroupDataLoss",
                *(
                    alert(
                        {
                            "severity": "critical",
                            "cluster_name": "prod",
                            "group": group,
                            "topic": "orders",
                        },
                        f"Consumer group {group} lost messages of topic orders to retention.",
                        f"On cluster prod, retention deleted {value} messages of orders (largest "
                        f"partition) that group {group} had not consumed: its committed offset "
                        "is below the partition's earliest offset.",
                    )
                    for group, value in (("moved", 7), ("twice", 5))
                ),
            )
            for when in ("3m", "5m", "8m")
        ],
    }
    time_lag = {
        "interval": "1m",
        "input_series": [
            # Observed a moment apart by the two replicas: one alert, with the larger value.
            series(max_lag, on("r1", 'cluster_name="prod",group="slow"'), "400x10"),
            series(max_lag, on("r2", 'cluster_name="prod",group="slow"'), "410x10"),
            series(max_lag, on("r3", 'cluster_name="prod",group="fast"'), "10x10"),
        ],
        "alert_rule_test": [
            fires(
                "6m",
                "KafkaConsumerGroupTimeLagHigh",
                {
                    "exp_labels": {"severity": "warning", "cluster_name": "prod", "group": "slow"},
                    "exp_annotations": {
                        "summary": "Consumer group slow is 6m 50s behind.",
                        "description": "On cluster prod, the oldest message group slow has not "
                        "consumed yet is 6m 50s old (threshold 300s).",
                    },
                },
            )
        ],
    }
    not_stable_and_stalled = {
        "interval": "1m",
        "input_series": [
            series(state, on("r1", 'cluster_name="prod",group="rebalancing"'), "1x20"),
            series(state, on("r2", 'cluster_name="prod",group="rebalancing"'), "1x20"),
            series(sum_lag, on("r1", 'cluster_name="prod",group="rebalancing"'), "0x20"),
            series(sum_lag, on("r2", 'cluster_name="prod",group="rebalancing"'), "0x20"),
            series(status, on("r2", 'cluster_name="prod",group="stuck"'), "3x20"),
            series(status, on("r3", 'cluster_name="prod",group="stuck"'), "3x20"),
        ],
        "alert_rule_test": [
            fires(
                "16m",
                "KafkaConsumerGroupNotStable",
                alert(
                    {"severity": "warning", "cluster_name": "prod", "group": "rebalancing"},
                    "Consumer group rebalancing has not been Stable for a while.",
                    "On cluster prod, group rebalancing is in state 1 (0 Unknown, "
                    "1 PreparingRebalance, 2 CompletingRebalance, 4 Dead, 5 Empty with lag, "
                    "6 Assigning, 7 Reconciling): it is rebalancing repeatedly or its consumers "
                    "are gone while messages wait. An Empty group with no lag does not alert.",
                ),
            ),
            fires(
                "16m",
                "KafkaConsumerGroupStalled",
                alert(
                    {"severity": "critical", "cluster_name": "prod", "group": "stuck"},
                    "Consumer group stuck is stalled: it has members but commits nothing.",
                    "On cluster prod, group stuck has members and records waiting, but its "
                    "committed offsets have not moved for stalled_after (health status 3 "
                    "STALLED): its consumers are stuck (a hung poll loop, a poison message, a "
                    "blocked downstream) and lag grows until they are fixed or restarted. "
                    'kafka_consumergroup_group_partition_status{group="stuck"} == 3 names the '
                    "partitions.",
                ),
            ),
        ],
    }
    stale_and_down = {
        "interval": "1m",
        "input_series": [
            # prod: r3 cannot reach it, r1 and r2 can: the cluster is up (some replica collects
            # it). dr: no replica reaches it from 1m on: one alert, not three.
            series(cluster_up, on("r1", 'cluster_name="prod"'), "1x12"),
            series(cluster_up, on("r2", 'cluster_name="prod"'), "1x12"),
            series(cluster_up, on("r3", 'cluster_name="prod"'), "0x12"),
            # r3 owns buckets of prod that it cannot collect: nobody exports those groups.
            series("klag_pipeline_shard_buckets", on("r1", 'cluster_name="prod"'), "21x12"),
            series("klag_pipeline_shard_buckets", on("r3", 'cluster_name="prod"'), "21x12"),
            series("klag_pipeline_shard_buckets", on("r3", 'cluster_name="dr"'), "22x12"),
            series(cluster_up, on("r1", 'cluster_name="dr"'), "1 0x11"),
            series(cluster_up, on("r2", 'cluster_name="dr"'), "1 0x11"),
            series(cluster_up, on("r3", 'cluster_name="dr"'), "1 0x11"),
            # One replica of three cannot be scraped: one alert, for it.
            series("up", f'{JOB},instance="r1:8000"', "1x12"),
            series("up", f'{JOB},instance="r2:8000"', "0x12"),
            series("up", f'{JOB},instance="r3:8000"', "1x12"),
        ],
        "alert_rule_test": [
            fires(
                "8m",
                "KlagPipelineDataStale",
                alert(
                    {"severity": "warning", "job": "klag-pipeline", "cluster_name": "dr"},
                    "klag-pipeline has no fresh data for Kafka cluster dr.",
                    "No collection cycle of cluster dr has succeeded within its staleness "
                    "threshold on any exporter instance (klag_pipeline_cluster_up is 0; 0 from "
                    "start-up until the first success): the cluster is unreachable, refuses the "
                    "exporter, answers too slowly, or no instance is leader. Its series are "
                    'withdrawn. See klag_pipeline_stage_errors_total{cluster_name="dr"} and the '
                    "exporter's logs.",
                ),
            ),
            fires(
                "8m",
                "KlagPipelineShardNotCollecting",
                alert(
                    {
                        "severity": "warning",
                        "job": "klag-pipeline",
                        "instance": "r3:8000",
                        "cluster_name": "prod",
                    },
                    "klag-pipeline replica r3:8000 cannot collect its share of cluster prod.",
                    "In sharded mode (docs/scaling.md) replica r3:8000 owns buckets of cluster "
                    "prod but has not collected it within its staleness threshold, while other "
                    "replicas do: the groups in its buckets are exported by no replica. Its "
                    "buckets move only if it leaves the sharding group: check its network path "
                    "and credentials to that cluster, or restart it.",
                ),
            ),
            fires(
                "8m",
                "KlagPipelineExporterDown",
                alert(
                    {"severity": "critical", "job": "klag-pipeline", "instance": "r2:8000"},
                    "The klag-pipeline exporter cannot be scraped.",
                    "Prometheus has not scraped r2:8000 successfully (or has no target at all); "
                    "consumer lag is not being monitored.",
                ),
            ),
        ],
    }
    rules_test = {
        "rule_files": [str(ALERTS_FILE)],
        "evaluation_interval": "1m",
        "tests": [data_loss, time_lag, not_stable_and_stalled, stale_and_down],
    }
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(rules_test, sort_keys=False), "utf-8")

    result = promtool("test", "rules", str(test_file))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
