"""The plumbing every cluster loop and sink runs on: bounded channels, a skip-don't-burst ticker,
an injectable clock, the sink fan-out and the one TaskGroup that owns every long-lived task."""

from klag_pipeline.pipeline.channel import Channel, ChannelClosed, DroppingChannel
from klag_pipeline.pipeline.clock import Clock, FakeClock, SystemClock
from klag_pipeline.pipeline.fanout import FanOut
from klag_pipeline.pipeline.runner import Runner, install_signal_handlers
from klag_pipeline.pipeline.ticker import Ticker

__all__ = [
    "Channel",
    "ChannelClosed",
    "Clock",
    "DroppingChannel",
    "FakeClock",
    "FanOut",
    "Runner",
    "SystemClock",
    "Ticker",
    "install_signal_handlers",
]
