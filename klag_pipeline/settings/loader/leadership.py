"""``[exporter.leadership]``, with klag-exporter's ``*_secs`` spellings (docs/configuration.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import get_args

from klag_pipeline.settings.durations import format_duration
from klag_pipeline.settings.loader.ranges import DURATIONS, seconds_setting
from klag_pipeline.settings.loader.sections import (
    Invalid,
    Section,
    boolean,
    choice,
    duration,
    optional_printable,
    optional_string,
    printable,
)
from klag_pipeline.settings.schema import LeadershipProvider, LeadershipSettings


def _whole_seconds(low: float, high: float) -> Callable[[object], float]:
    """klag-exporter's ``*_secs`` keys are integer seconds; a duration string is accepted too."""
    as_duration = duration(low, high)

    def convert(value: object) -> float:
        if isinstance(value, int) and not isinstance(value, bool):
            if not low <= value <= high:
                raise Invalid(
                    f"must be between {format_duration(low)} and {format_duration(high)}, "
                    f"got {value} seconds"
                )
            return float(value)
        return as_duration(value)

    return convert


def leadership_settings(s: Section) -> LeadershipSettings:
    d = LeadershipSettings()
    lease_duration = _aliased(s, "lease_duration", "lease_duration_secs", d.lease_duration)
    renew_deadline = seconds_setting(s, "renew_deadline", d.renew_deadline)
    # klag-exporter's grace period is the margin between the leader's last chance to renew and
    # the lease running out, i.e. lease_duration − renew_deadline (15 s − 5 s = our 10 s default).
    grace = s.get("grace_period_secs", None, _whole_seconds(*DURATIONS[s.at("renew_deadline")]))
    if grace is not None:
        if "renew_deadline" in s.data:
            s.problem("grace_period_secs", "set either renew_deadline or grace_period_secs")
        elif grace >= lease_duration:
            s.problem("grace_period_secs", "must be less than the lease duration")
        else:
            renew_deadline = lease_duration - grace
    result = LeadershipSettings(
        enabled=s.get("enabled", d.enabled, boolean),
        provider=s.get("provider", d.provider, choice(get_args(LeadershipProvider))),
        lease_name=s.get("lease_name", d.lease_name, printable),
        lease_namespace=s.get("lease_namespace", d.lease_namespace, optional_printable),
        identity=s.get("identity", d.identity, optional_printable),
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=seconds_setting(s, "retry_period", d.retry_period),
        cluster=s.get("cluster", d.cluster, optional_string),
        kubeconfig=s.get("kubeconfig", d.kubeconfig, optional_printable),
    )
    if result.provider == "kubernetes":
        _kubernetes_names(s, result)
    if not result.lease_duration > result.renew_deadline > result.retry_period:
        s.problem(
            "renew_deadline",
            "must be less than lease_duration and greater than retry_period (got "
            f"{format_duration(result.lease_duration)} > {format_duration(result.renew_deadline)}"
            f" > {format_duration(result.retry_period)})",
        )
    s.finish()
    return result


# Kubernetes object names (a Lease is a DNS-1123 subdomain) and namespaces (a DNS-1123 label):
# the API server refuses anything else, so say so at start-up rather than at every renewal.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _kubernetes_names(s: Section, result: LeadershipSettings) -> None:
    name, namespace = result.lease_name, result.lease_namespace
    if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        s.problem(
            "lease_name",
            "must be a Kubernetes object name: lower-case letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most 253 characters; got {name!r}",
        )
    if namespace is not None and (len(namespace) > 63 or not _LABEL.fullmatch(namespace)):
        s.problem(
            "lease_namespace",
            "must be a Kubernetes namespace: lower-case letters, digits and '-', starting and "
            f"ending with a letter or digit, at most 63 characters; got {namespace!r}",
        )


def _aliased(s: Section, key: str, alias: str, default: float) -> float:
    low, high = DURATIONS[s.at(key)]
    if alias not in s.data:
        s.known.append(alias)
        return s.get(key, default, duration(low, high))
    if key in s.data:
        s.raw(key)
        s.problem(alias, f"set either {key} or {alias}, not both")
    else:
        s.known.append(key)
    return s.get(alias, default, _whole_seconds(low, high))
