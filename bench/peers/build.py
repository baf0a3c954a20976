"""The peer exporters' binaries, built once into ``~/.cache/klag-pipeline/peers/<name>-<version>/``
(``devtools.user_cache``; ``$KLAG_PEERS_CACHE`` overrides).

- **klag-exporter** comes from crates.io: ``cargo install klag-exporter --locked --version V
  --root <dir>`` (librdkafka is built from the crate's bundled source: needs cmake, a C/C++
  compiler, libsasl2-dev and libcurl4-openssl-dev, the last two installed first through
  devtools/apt_install.sh). Skipped when ``<dir>/bin/klag-exporter`` exists.
- **KMinion** and **kafka_exporter** cannot be had from a registry here: the Go module proxy
  answers 403 "This module version is not available" for their versions' ``.info``, ``.zip``
  and ``@v/list`` (so ``go install`` and ``go mod download`` both fail; KMinion's go.mod also
  declares ``github.com/cloudhut/kminion/v2``, not the repository's path). This module builds
  neither: it only finds a binary already at ``<dir>/kminion`` or ``<dir>/kafka_exporter``
  (or given with ``--binary NAME=PATH``) and otherwise says why the peer is missing.
  docs/benchmarks.md ("Peers") says how such a binary came to be on the measuring machine.

``python -m bench.peers.build [--peers klag-exporter,kminion,kafka_exporter]`` builds or checks.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.processes import REPO
from devtools import user_cache

CARGO_TIMEOUT = 3600.0
DEBIAN_PACKAGES = ("libsasl2-dev", "libcurl4-openssl-dev")
"""What ``cargo install klag-exporter`` needs beyond the machine's cmake and compilers."""


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    version: str
    binary: str
    """The executable's path relative to the peer's cache directory."""
    source: str
    """Where it comes from, for the result file."""


PEERS: dict[str, Peer] = {
    "klag-exporter": Peer(
        "klag-exporter", "0.1.29", "bin/klag-exporter", "crates.io, cargo install --locked"
    ),
    "kminion": Peer(
        "kminion", "2.3.5", "kminion", "tag v2.3.5 of redpanda-data/kminion, go build (by hand)"
    ),
    "kafka_exporter": Peer(
        "kafka_exporter",
        "1.9.0",
        "kafka_exporter",
        "tag v1.9.0 of danielqsj/kafka_exporter, go build (by hand)",
    ),
}

GO_PROXY_REFUSAL = (
    "the Go module proxy refuses this version (403 'This module version is not available' for "
    ".info, .zip and @v/list), so it cannot be built from a registry here; put a binary built "
    "from the tagged source at {path} or pass --binary {name}=PATH"
)


class PeerUnavailable(RuntimeError):
    pass


def cache_dir(peer: Peer) -> Path:
    return user_cache("KLAG_PEERS_CACHE", "peers") / f"{peer.name}-{peer.version}"


def binary_path(peer: Peer) -> Path:
    return cache_dir(peer) / peer.binary


def ensure(name: str, log: Callable[[str], None] = print, given: Path | None = None) -> Path:
    """The peer's executable, building it first when it can be built here."""
    peer = PEERS[name]
    path = given or binary_path(peer)
    if path.is_file():
        return path
    if given is not None:
        raise PeerUnavailable(f"{name}: no file at {given}")
    if name != "klag-exporter":
        raise PeerUnavailable(f"{name}: " + GO_PROXY_REFUSAL.format(path=path, name=name))
    root = cache_dir(peer)
    root.mkdir(parents=True, exist_ok=True)
    # rdkafka's "sasl" feature links libsasl2 (sasl2-sys panics without its headers), and
    # librdkafka's bundled build includes curl/curl.h.
    apt = subprocess.run(
        ["bash", str(REPO / "devtools" / "apt_install.sh"), *DEBIAN_PACKAGES],
        capture_output=True, text=True, timeout=CARGO_TIMEOUT, check=False,
    )  # fmt: skip
    if apt.returncode != 0:
        raise PeerUnavailable(f"{name}: {apt.stderr.strip()}")
    command = [
        "cargo", "install", "klag-exporter", "--locked", "--version", peer.version,
        "--root", str(root),
    ]  # fmt: skip
    log(f"building {name} {peer.version}: {' '.join(command)} (several minutes, once)")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CARGO_TIMEOUT, check=False
    )
    if done.returncode != 0 or not path.is_file():
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise PeerUnavailable(f"{name}: cargo install failed ({done.returncode}):\n{tail}")
    return path


def resolve(
    names: Iterable[str], given: dict[str, Path], log: Callable[[str], None] = print
) -> tuple[dict[str, Path], dict[str, str]]:
    """(available binaries, reasons for the missing ones)."""
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for name in names:
        try:
            found[name] = ensure(name, log, given.get(name))
        except (PeerUnavailable, OSError, subprocess.TimeoutExpired) as error:
            missing[name] = str(error)
            log(f"peer unavailable: {error}")
    return found, missing


def parse_binaries(pairs: Iterable[str]) -> dict[str, Path]:
    given: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or name not in PEERS:
            raise ValueError(f"--binary wants NAME=PATH with NAME in {sorted(PEERS)}: {pair!r}")
        given[name] = Path(path).expanduser()
    return given


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.build")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--binary", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args(argv)
    found, missing = resolve(args.peers.split(","), parse_binaries(args.binary))
    for name, path in found.items():
        print(f"{name}: {path}")
    for name, reason in missing.items():
        print(f"{name}: MISSING — {reason}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
