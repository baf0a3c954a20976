"""Sharded mode: replicas share the collection through Kafka's group membership (docs/scaling.md).

``ownership`` (which buckets a replica owns, and what that makes it export), ``assignment`` (the
group leader's sticky assignment and the bytes members exchange), ``member`` (one replica's
membership loop) and ``gate`` (what the exporter does when the assignment changes).
"""
