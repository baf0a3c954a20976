"""The exporter process under hostile HTTP clients (issue 18, defect 4), on loopback.

``klag-pipeline run`` runs in a subprocess under ``RLIMIT_NOFILE`` 256 with one cluster whose
bootstrap port is closed (no JVM needed: ``/metrics`` still answers with the exporter's own
families). 300 silent connections and 10 clients dripping a header line per second must not
keep ``/metrics`` and ``/health`` from answering, must be closed by the server within the
documented header timeout, and must not flood stderr; scrapes keep working after the attack.
A second process on a busy port exits 1 with one line naming the address.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The documented values (docs/decisions.md, "HTTP server limits"), stated here as ground truth.
HEADER_TIMEOUT = 10.0
EXIT_FATAL = 1
NOFILE = 256
IDLE_CLIENTS = 300
SLOW_CLIENTS = 10
# Scheduling on a busy 2-core machine: generous, and still far below "never".
MARGIN = 5.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class Exporter:
    def __init__(self, tmp_path: Path, name: str, port: int) -> None:
        self.port = port
        self.settings = tmp_path / f"{name}.toml"
        # Nothing listens on the bootstrap port: the cluster is down, the exporter is not.
        self.settings.write_text(
            f'[exporter]\npoll_interval = "2s"\nhttp_host = "127.0.0.1"\nhttp_port = {port}\n'
            f'[[clusters]]\nname = "down"\nbootstrap_servers = "127.0.0.1:{free_port()}"\n'
        )
        self.stderr = tmp_path / f"{name}.stderr"
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "klag_pipeline", "run", str(self.settings)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=limit_descriptors,
                env={k: v for k, v in os.environ.items() if not k.startswith("KLAG_")},
            )

    def get(self, path: str, timeout: float = 2.0) -> int:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                response.read()
                status: int = response.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code

    def answers(self, path: str) -> bool:
        try:
            return self.get(path) == 200
        except OSError:
            return False

    def wait_answering(self, within: float) -> float:
        """Seconds until both /metrics and /health answered 200 (fails after ``within``)."""
        start = time.monotonic()
        while not (self.answers("/metrics") and self.answers("/health")):
            assert self.process.poll() is None, self.log()
            assert time.monotonic() - start < within, f"no scrape within {within}s\n{self.log()}"
            time.sleep(0.2)
        return time.monotonic() - start

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    process = Exporter(tmp_path, "exporter", free_port())
    try:
        process.wait_answering(within=30)
        yield process
    finally:
        process.stop()


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def test_idle_and_slow_clients_cannot_starve_scrapes(exporter: Exporter) -> None:
    attack: dict[socket.socket, float] = {}  # socket -> when it connected
    slow: list[socket.socket] = []
    try:
        for index in range(IDLE_CLIENTS + SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=10)
            attack[sock] = time.monotonic()
            if index >= IDLE_CLIENTS:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                slow.append(sock)
            sock.setblocking(False)
        attack_started = time.monotonic()

        # While the attack is on (the slow clients still dripping): scrapes answer.
        waited = exporter.wait_answering(within=MARGIN)
        open_now = [sock for sock in attack if not closed_by_peer(sock)]
        scrapes_during_attack = 0
        closed_at: dict[socket.socket, float] = {}
        deadline = attack_started + HEADER_TIMEOUT + 2 * MARGIN
        last_drip = 0.0
        while len(closed_at) < len(attack) and time.monotonic() < deadline:
            if time.monotonic() - last_drip >= 1.0:  # the slowloris: a header line a second
                last_drip = time.monotonic()
                for sock in slow:
                    if sock not in closed_at:
                        # The server may have cut it already (EPIPE, ECONNRESET).
                        with contextlib.suppress(OSError):
                            sock.send(b"X-Drip: 1\r\n")
            readable, _, _ = select.select([s for s in attack if s not in closed_at], [], [], 0.2)
            for sock in readable:
                if closed_by_peer(sock):
                    closed_at[sock] = time.monotonic()
            if exporter.answers("/health") and exporter.answers("/metrics"):
                scrapes_during_attack += 1
        late = [
            closed_at.get(sock, float("inf")) - connected
            for sock, connected in attack.items()
            if closed_at.get(sock, float("inf")) - connected > HEADER_TIMEOUT + MARGIN
        ]
        assert not late, (
            f"{len(late)} of {len(attack)} attacking connections not closed by the server within "
            f"{HEADER_TIMEOUT}s + {MARGIN}s (first: {late[0]:.1f}s)\n{exporter.log()}"
        )
        assert all(sock in closed_at for sock in slow)
    finally:
        for sock in attack:
            sock.close()

    print(
        f"scrapes answered {waited:.2f}s after the attack started; {len(open_now)} attacking "
        f"connections still open then; {scrapes_during_attack} scrape rounds during the attack"
    )
    assert scrapes_during_attack > 0
    # After the attack: still serving, still the same process.
    exporter.wait_answering(within=MARGIN)
    assert exporter.process.poll() is None
    log = exporter.log()
    assert "Traceback" not in log, log
    assert len(log.splitlines()) < 50, log


def test_a_busy_port_is_one_line_and_exit_1(exporter: Exporter, tmp_path: Path) -> None:
    second = Exporter(tmp_path, "second", exporter.port)
    try:
        code = second.process.wait(30)
    finally:
        second.stop()
    lines = second.stderr.read_text().splitlines()
    assert code == EXIT_FATAL, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0], lines
    assert f"cannot listen on 127.0.0.1:{exporter.port}: address already in use" in lines[0]
    assert exporter.answers("/health")  # the first process is untouched
