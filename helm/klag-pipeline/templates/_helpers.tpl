{{/* Names and labels. */}}
{{- define "klag-pipeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "klag-pipeline.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "klag-pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "klag-pipeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "klag-pipeline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "klag-pipeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "klag-pipeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "klag-pipeline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Settings lookups the templates share. */}}
{{- define "klag-pipeline.httpPort" -}}
{{- $exporter := .Values.settings.exporter | default dict }}
{{- $port := get $exporter "http_port" | default 8000 }}
{{- int64 $port }}
{{- end }}

{{- define "klag-pipeline.leadership" -}}
{{- $exporter := .Values.settings.exporter | default dict }}
{{- toJson (get $exporter "leadership" | default dict) }}
{{- end }}

{{/* "true" when leader election through a Kubernetes Lease is configured. */}}
{{- define "klag-pipeline.kubernetesLeadership" -}}
{{- $l := include "klag-pipeline.leadership" . | fromJson }}
{{- if and $l.enabled (eq (default "kubernetes" $l.provider) "kubernetes") }}true{{ end }}
{{- end }}

{{- define "klag-pipeline.sharding" -}}
{{- $exporter := .Values.settings.exporter | default dict }}
{{- toJson (get $exporter "sharding" | default dict) }}
{{- end }}

{{/*
"true" in sharded mode. Fails the render when leader election is on too: one replica would both
stand by and own buckets, which the exporter refuses at start-up (docs/scaling.md).
*/}}
{{- define "klag-pipeline.shardingEnabled" -}}
{{- $s := include "klag-pipeline.sharding" . | fromJson }}
{{- $l := include "klag-pipeline.leadership" . | fromJson }}
{{- if and $s.enabled $l.enabled }}
{{- fail "settings.exporter.sharding.enabled and settings.exporter.leadership.enabled are both true: choose one — leader election (one replica exports everything, the others stand by) or sharding (every replica exports its share)" }}
{{- end }}
{{- if $s.enabled }}true{{ end }}
{{- end }}

{{- define "klag-pipeline.leaseNamespace" -}}
{{- $l := include "klag-pipeline.leadership" . | fromJson }}
{{- default .Release.Namespace $l.lease_namespace }}
{{- end }}

{{/*
TOML rendering of the settings values. Helm reads every YAML number as a float64, and its own
toToml would print 8000 as 8000.0, which the exporter rejects for integer keys; integral floats
are printed as integers here. Strings go through toJson: JSON string escapes are a subset of
TOML basic-string escapes. Keys outside [A-Za-z0-9_-] (e.g. "security.protocol") are quoted, so
TOML does not read them as nested tables. Null values are left out.
*/}}
{{- define "klag-pipeline.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "klag-pipeline.toml.value" -}}
{{- $kind := kindOf . }}
{{- if eq $kind "string" }}{{ toJson . }}
{{- else if eq $kind "bool" }}{{ . }}
{{- else if or (eq $kind "float64") (eq $kind "float32") }}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (hasPrefix "int" $kind) (hasPrefix "uint" $kind) }}{{ . }}
{{- else if eq $kind "slice" }}[{{ range $i, $item := . }}{{ if $i }}, {{ end }}{{ include "klag-pipeline.toml.value" $item }}{{ end }}]
{{- else }}{{ fail (printf "settings: a %s cannot be rendered as a TOML value" $kind) }}
{{- end }}
{{- end }}

{{- define "klag-pipeline.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}{{ if kindIs "map" (first .) }}true{{ end }}{{ end }}
{{- end }}

{{- define "klag-pipeline.toml.table" -}}
{{- $path := .path }}
{{- $table := .table }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if not (or (kindIs "invalid" $value) (kindIs "map" $value) (include "klag-pipeline.toml.isTableArray" $value)) }}
{{ include "klag-pipeline.toml.key" $key }} = {{ include "klag-pipeline.toml.value" $value }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- $sub := include "klag-pipeline.toml.key" $key }}
{{- if $path }}{{ $sub = printf "%s.%s" $path $sub }}{{ end }}
{{- if kindIs "map" $value }}

[{{ $sub }}]
{{- include "klag-pipeline.toml.table" (dict "path" $sub "table" $value) }}
{{- else if include "klag-pipeline.toml.isTableArray" $value }}
{{- range $item := $value }}

[[{{ $sub }}]]
{{- include "klag-pipeline.toml.table" (dict "path" $sub "table" $item) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "klag-pipeline.settingsToml" -}}
# Rendered by the klag-pipeline Helm chart from .Values.settings (keys as in settings.toml).
{{- include "klag-pipeline.toml.table" (dict "path" "" "table" .Values.settings) }}
{{- end }}
