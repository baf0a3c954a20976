{{/*
The alert rules, as the `groups:` of a Prometheus rules file. Rendered into the PrometheusRule
and, with default values, identical to deploy/prometheus/alerts.yaml (a test compares them).
Expressions aggregate with max by (...) so that custom cluster labels, scrape labels, HA
replicas (standbys export no cluster series) and sharded replicas (a group exported by two of them
for a moment during a rebalance) never split or duplicate an alert; KlagPipelineDataStale takes
the max over replicas (a cluster is fresh when some replica collects it).
*/}}
{{- define "klag-pipeline.alertGroups" -}}
{{- $a := .Values.alerts }}
{{- $job := $a.jobSelector | default (printf "job=%q" (include "klag-pipeline.fullname" .)) -}}
groups:
  - name: klag-pipeline.consumer-groups
    rules:
      - alert: KafkaConsumerGroupDataLoss
        expr: >-
          max by (cluster_name, group, topic)
          (kafka_consumergroup_group_messages_lost) > 0
        for: {{ $a.dataLoss.for }}
        labels:
          severity: {{ $a.dataLoss.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            Consumer group {{`{{ $labels.group }}`}} lost messages of topic
            {{`{{ $labels.topic }}`}} to retention.
          description: >-
            On cluster {{`{{ $labels.cluster_name }}`}}, retention deleted
            {{`{{ $value }}`}} messages of {{`{{ $labels.topic }}`}} (largest partition) that
            group {{`{{ $labels.group }}`}} had not consumed: its committed offset is below the
            partition's earliest offset.
      - alert: KafkaConsumerGroupNearDataLoss
        expr: >-
          (max by (cluster_name, group, topic)
          (kafka_consumergroup_group_lag_retention_ratio) > {{ $a.nearDataLoss.retentionRatioPercent }})
          unless on (cluster_name, group, topic)
          (max by (cluster_name, group, topic) (kafka_consumergroup_group_messages_lost) > 0)
        for: {{ $a.nearDataLoss.for }}
        labels:
          severity: {{ $a.nearDataLoss.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            Consumer group {{`{{ $labels.group }}`}} is close to losing messages of topic
            {{`{{ $labels.topic }}`}} to retention.
          description: >-
            On cluster {{`{{ $labels.cluster_name }}`}}, the lag of group
            {{`{{ $labels.group }}`}} covers {{`{{ $value | printf "%.0f" }}`}}% of the
            retained messages of {{`{{ $labels.topic }}`}}; retention deletes the oldest
            unconsumed ones next.
      - alert: KafkaConsumerGroupTimeLagHigh
        expr: >-
          max by (cluster_name, group)
          (kafka_consumergroup_group_max_lag_seconds) > {{ $a.timeLag.thresholdSeconds }}
        for: {{ $a.timeLag.for }}
        labels:
          severity: {{ $a.timeLag.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            Consumer group {{`{{ $labels.group }}`}} is {{`{{ $value | humanizeDuration }}`}}
            behind.
          description: >-
            On cluster {{`{{ $labels.cluster_name }}`}}, the oldest message group
            {{`{{ $labels.group }}`}} has not consumed yet is {{`{{ $value | humanizeDuration }}`}}
            old (threshold {{ $a.timeLag.thresholdSeconds }}s).
      - alert: KafkaConsumerGroupNotStable
        expr: >-
          (max by (cluster_name, group) (kafka_consumergroup_group_state) != 3)
          unless on (cluster_name, group)
          (
          (max by (cluster_name, group) (kafka_consumergroup_group_state) == 5)
          and on (cluster_name, group)
          (max by (cluster_name, group) (kafka_consumergroup_group_sum_lag) == 0)
          )
        for: {{ $a.notStable.for }}
        labels:
          severity: {{ $a.notStable.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            Consumer group {{`{{ $labels.group }}`}} has not been Stable for a while.
          description: >-
            On cluster {{`{{ $labels.cluster_name }}`}}, group {{`{{ $labels.group }}`}} is in
            state {{`{{ $value }}`}} (0 Unknown, 1 PreparingRebalance, 2 CompletingRebalance,
            4 Dead, 5 Empty with lag, 6 Assigning, 7 Reconciling): it is rebalancing
            repeatedly or its consumers are gone while messages wait. An Empty group with no
            lag does not alert.
      - alert: KafkaConsumerGroupStalled
        expr: >-
          max by (cluster_name, group)
          (kafka_consumergroup_group_status) == 3
        for: {{ $a.stalled.for }}
        labels:
          severity: {{ $a.stalled.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            Consumer group {{`{{ $labels.group }}`}} is stalled: it has members but commits
            nothing.
          description: >-
            On cluster {{`{{ $labels.cluster_name }}`}}, group {{`{{ $labels.group }}`}} has members
            and records waiting, but its committed offsets have not moved for stalled_after
            (health status 3 STALLED): its consumers are stuck (a hung poll loop, a poison
            message, a blocked downstream) and lag grows until they are fixed or restarted.
            kafka_consumergroup_group_partition_status{group="{{`{{ $labels.group }}`}}"} == 3
            names the partitions.
      - alert: KafkaConsumerGroupStopped
        expr: >-
          max by (cluster_name, group)
          (kafka_consumergroup_group_status) == 4
        for: {{ $a.stopped.for }}
        labels:
          severity: {{ $a.stopped.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            Consumer group {{`{{ $labels.group }}`}} has stopped consuming.
          description: >-
            On cluster {{`{{ $labels.cluster_name }}`}}, group {{`{{ $labels.group }}`}} has no members
            while records wait, and its lag grew or its commits are older than stopped_after
            (health status 4 STOPPED): nothing consumes for it. Start its consumers, or
            delete the group if it is retired.
      - alert: KafkaConsumerGroupCatchUpTooSlow
        expr: >-
          (
            max by (cluster_name, group)
            (kafka_consumergroup_group_max_catch_up_seconds) > {{ $a.catchUp.thresholdSeconds }}
            unless on (cluster_name, group)
            (
              max by (cluster_name, group)
              (kafka_consumergroup_group_max_catch_up_seconds) == +Inf
              unless on (cluster_name, group)
              max by (cluster_name, group)
              (kafka_consumergroup_group_sum_lag_velocity) > 0
            )
          )
          unless on (cluster_name, group)
          (max by (cluster_name, group) (kafka_consumergroup_group_status) >= 3)
        for: {{ $a.catchUp.for }}
        labels:
          severity: {{ $a.catchUp.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            Consumer group {{`{{ $labels.group }}`}} is not catching up fast enough.
          description: >-
            On cluster {{`{{ $labels.cluster_name }}`}}, at its current consume and produce rates
            group {{`{{ $labels.group }}`}} needs {{`{{ $value | humanizeDuration }}`}} to work off its
            lag (threshold {{ $a.catchUp.thresholdSeconds }}s; +Inf: it consumes slower than
            records arrive and its lag grows). Add consumers or make them faster. Catch-up
            time is not time lag:
            see kafka_consumergroup_group_max_lag_seconds for how far behind it is.
      - alert: KafkaConsumerGroupTopicAbandoned
        expr: >-
          max by (cluster_name, group, topic)
          (kafka_consumergroup_group_topic_abandoned) == 1
        for: {{ $a.abandoned.for }}
        labels:
          severity: {{ $a.abandoned.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            Consumer group {{`{{ $labels.group }}`}} has abandoned topic {{`{{ $labels.topic }}`}}.
          description: >-
            On cluster {{`{{ $labels.cluster_name }}`}}, group {{`{{ $labels.group }}`}} is Stable with
            members, none of which is assigned a partition of {{`{{ $labels.topic }}`}}, and its
            commits there have not moved for abandoned_after: its lag on
            {{`{{ $labels.topic }}`}} is left over from an earlier subscription. Delete the group's
            offsets for the topic (kafka-consumer-groups --delete-offsets) or set
            [exporter.health] drop_abandoned = true.
  - name: klag-pipeline.exporter
    rules:
      - alert: KlagPipelineExporterDown
        expr: >-
          up{ {{- $job -}} } == 0 or absent(up{ {{- $job -}} })
        for: {{ $a.exporterDown.for }}
        labels:
          severity: {{ $a.exporterDown.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: The klag-pipeline exporter cannot be scraped.
          description: >-
            Prometheus has not scraped {{`{{ $labels.instance }}`}} successfully (or has no
            target at all); consumer lag is not being monitored.
      - alert: KlagPipelineShardNotCollecting
        expr: >-
          (max by (job, namespace, instance, cluster_name)
          (klag_pipeline_cluster_up{ {{- $job -}} }) == 0)
          and on (job, namespace, instance, cluster_name)
          (klag_pipeline_shard_buckets{ {{- $job -}} } > 0)
          unless on (job, namespace, cluster_name)
          (max by (job, namespace, cluster_name) (klag_pipeline_cluster_up{ {{- $job -}} }) == 0)
        for: {{ $a.staleData.for }}
        labels:
          severity: {{ $a.staleData.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            klag-pipeline replica {{`{{ $labels.instance }}`}} cannot collect its share of cluster
            {{`{{ $labels.cluster_name }}`}}.
          description: >-
            In sharded mode (docs/scaling.md) replica {{`{{ $labels.instance }}`}} owns buckets of
            cluster {{`{{ $labels.cluster_name }}`}} but has not collected it within its staleness
            threshold, while other replicas do: the groups in its buckets are exported by no
            replica. Its buckets move only if it leaves the sharding group: check its network
            path and credentials to that cluster, or restart it.
      - alert: KlagPipelineDataStale
        expr: >-
          max by (job, namespace, cluster_name)
          (klag_pipeline_cluster_up{ {{- $job -}} }) == 0
        for: {{ $a.staleData.for }}
        labels:
          severity: {{ $a.staleData.severity }}
          {{- with $a.labels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: >-
            klag-pipeline has no fresh data for Kafka cluster {{`{{ $labels.cluster_name }}`}}.
          description: >-
            No collection cycle of cluster {{`{{ $labels.cluster_name }}`}} has succeeded within
            its staleness threshold on any exporter instance (klag_pipeline_cluster_up is 0;
            0 from start-up until the first success): the cluster is unreachable, refuses the
            exporter, answers too slowly, or no instance is leader. Its series are withdrawn.
            See klag_pipeline_stage_errors_total{cluster_name="{{`{{ $labels.cluster_name }}`}}"}
            and the exporter's logs.
{{- end }}
