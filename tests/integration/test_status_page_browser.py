"""The ``/`` status page in a real headless Chromium, served by a real exporter watching a real
broker: a caught-up group (OK) and a group whose members are gone while its lag grows (STOPPED
once ``stopped_after`` passes), and a group whose name is markup. The DOM Chromium builds must
list them worst first with their statuses, the markup as text; the screenshot must be a PNG of
the window's size showing the two status colours.

Chromium comes from the Debian packages ``make test-system-deps`` installs (``chromium``).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from klag_pipeline.http import build_app, start_server
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import HealthSettings
from tests.integration.pipeline_support import cluster, exactly, running, settings
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.png import read_png
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

CLUSTER = "browser"
WIDTH, HEIGHT = 1000, 700
# The badge colours of docs/health.md's page (status_page._STYLE).
OK_GREEN = (0x2E, 0x7D, 0x32)
STOPPED_RED = (0xC6, 0x28, 0x28)


class GroupRows(HTMLParser):
    """The text of each cell of each ``<tr class="group">``, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_row = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._in_row = ("class", "group") in attrs
            if self._in_row:
                self.rows.append([])
        elif tag == "td" and self._in_row:
            self._cell = []
        elif self._cell is not None and tag not in ("a", "span"):  # the page's own link, badge
            self._cell.append(f"<{tag}>")  # an element from data: markup was not escaped

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._in_row = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


async def _chromium(*args: str, profile: Path) -> bytes:
    binary = shutil.which("chromium")
    assert binary is not None, "chromium is not installed (make test-system-deps installs it)"
    # Run as a subprocess of this event loop: the exporter answering Chromium lives in it too.
    process = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",  # the tests may run as root, where the sandbox refuses to start
        "--disable-gpu",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")
    return out


async def test_status_page_in_chromium(
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    topic, busy, ok_group, stopped_group = unique("t"), unique("busy"), unique("ok"), unique("gone")
    markup_group = f"<b>{unique('markup')}</b>"
    tp, busy_tp = TopicPartition(topic, 0), TopicPartition(busy, 0)
    for name in (topic, busy):
        await kafka.create_topic(name, partitions=1)
        await kafka.produce(name, [Rec(b"x", partition=0)] * 5)
    # Caught up on a topic nobody produces to again: OK throughout.
    await kafka.commit(ok_group, {tp: 5})
    await kafka.commit(markup_group, {tp: 5})
    # Behind on the topic that keeps growing below, with no member left: STOPPED.
    await kafka.commit(stopped_group, {busy_tp: 1})
    base = settings(
        cluster(
            CLUSTER,
            kafka_bootstrap,
            groups=[exactly(ok_group, stopped_group, markup_group)],
            topics=[exactly(topic, busy)],
        ),
        poll_interval=0.5,
    )
    health = HealthSettings(window=2.0, stalled_after=2.0, stopped_after=2.0)
    config = replace(base, exporter=replace(base.exporter, health=health))
    async with running(config) as run:
        exporter = run.exporter
        app = build_app(
            exporter.prometheus,
            exporter.status,
            version="browser-test",
            settings_view={},
            snapshots=exporter.snapshot_store,
        )
        server = await start_server(app, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.port}"
        try:
            await kafka.produce(busy, [Rec(b"y", partition=0)] * 3)  # the gone group falls behind

            async with aiohttp.ClientSession() as http:
                seen: dict[str, Any] = {}

                async def ok_and_stopped() -> bool:
                    async with http.get(f"{url}/api/v1/clusters/{CLUSTER}/groups") as response:
                        seen["body"] = await response.text()
                        if response.status != 200:
                            return False
                        shown = {g["group"]: g["status"] for g in (await response.json())["groups"]}
                    return shown.get(ok_group) == "OK" and shown.get(stopped_group) == "STOPPED"

                await wait_until(
                    ok_and_stopped,
                    within=30,
                    message="OK and STOPPED in the API",
                    details=lambda: str(seen.get("body")),
                )

            dom = (await _chromium("--dump-dom", f"{url}/", profile=tmp_path / "p1")).decode()
            screenshot = tmp_path / "status.png"
            await _chromium(f"--screenshot={screenshot}", f"{url}/", profile=tmp_path / "p2")
        finally:
            await server.cleanup()

    parser = GroupRows()
    parser.feed(dom)
    by_group = {row[0]: row for row in parser.rows}
    # Columns: group, status, state, max lag, total lag, time lag, catch-up, commit age, ...
    # Worst first; the two OK groups with lag 0 by name.
    assert [row[0] for row in parser.rows] == [stopped_group, *sorted([ok_group, markup_group])]
    assert by_group[stopped_group][1] == "STOPPED"
    assert by_group[stopped_group][3] == "7"  # committed 1, end of log 8
    assert by_group[ok_group][1:5] == ["OK", "EMPTY", "0", "0"]
    assert by_group[ok_group][6] == "caught up"
    assert by_group[markup_group][1] == "OK"  # shown as text: no <b> element inside the cell
    assert "Clusters" in dom
    assert CLUSTER in dom

    data = screenshot.read_bytes()
    image = read_png(data)
    assert (image.width, image.height) == (WIDTH, HEIGHT)
    assert {OK_GREEN, STOPPED_RED} <= image.pixels
