"""The timestamp sampler: the record timestamp at each committed offset, read with Fetch.

:mod:`.jobs` is the pure state model of one offset's read across passes (with its diagram);
:mod:`.timestamp_sampler` sends the Fetch requests and applies that model to the answers.
"""

from klag_pipeline.kafka.sampler.jobs import MAX_PASSES, STAGE
from klag_pipeline.kafka.sampler.timestamp_sampler import (
    FetchTransport,
    IsolationLevel,
    SampleResult,
    TimestampSampler,
)

__all__ = [
    "MAX_PASSES",
    "STAGE",
    "FetchTransport",
    "IsolationLevel",
    "SampleResult",
    "TimestampSampler",
]
