"""``check`` rejects what ``run`` rejects (issue 18, defect 6).

Every case goes through the command line as an operator would, and asserts exit code 2 and a
``dotted.path: message`` line naming the setting and, for files, the file. The ``run`` cases
start the real ``klag-pipeline run`` process: before the fix some of them started exporting
with the bad value instead of exiting.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from devtools.kafka_local import TlsFiles, generate_tls_files
from klag_pipeline.cli import run_command

REPO = Path(__file__).resolve().parents[2]
# A closed loopback port: nothing here may need a broker, validation happens before any I/O.
CLUSTER = '[[clusters]]\nname = "local"\nbootstrap_servers = "127.0.0.1:9"\n'
LINE = re.compile(r'^[A-Za-z_"\[][^\s]*: \S.*$')
RUN_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_tls_files(tmp_path_factory.mktemp("tls"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = run_command(["check", str(path)])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    if code == 2:
        assert out == ""
        assert lines
        assert all(LINE.match(line) for line in lines), lines
    return code, lines


def loopback() -> str:
    """An ``[exporter]`` table that keeps ``run`` on loopback, should it start after all."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f'[exporter]\nhttp_host = "127.0.0.1"\nhttp_port = {port}\n'


def run_process(path: Path) -> subprocess.CompletedProcess[str]:
    """``klag-pipeline run``; a process that is still running after RUN_TIMEOUT accepted the
    settings, which the caller's exit-code assertion then reports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAG_")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "klag_pipeline", "run", str(path), "--log-format", "json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def assert_rejected(lines: list[str], path: str, *fragments: str) -> None:
    matching = [line for line in lines if line.startswith(f"{path}: ")]
    assert matching, f"no line for {path}: {lines}"
    assert any(all(f in line for f in fragments) for line in matching), (fragments, matching)


# --- files the process opens ---------------------------------------------------------------


def test_missing_http_tls_files_fail_check_naming_setting_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = tmp_path / "absent-cert.pem", tmp_path / "absent-key.pem"
    path = write(
        tmp_path, f'[exporter.http]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n' + CLUSTER
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, "exporter.http.tls_cert_file", str(cert), "no such file")
    assert_rejected(lines, "exporter.http.tls_key_file", str(key), "no such file")


def test_http_tls_files_that_are_not_a_pair_fail_check(
    tmp_path: Path, tls: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CA certificate with the client's key: both files exist and are PEM, but do not match.
    path = write(
        tmp_path,
        f'[exporter.http]\ntls_cert_file = "{tls.ca_cert}"\ntls_key_file = "{tls.client_key}"\n'
        + CLUSTER,
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, "exporter.http.tls_cert_file", str(tls.ca_cert), str(tls.client_key))


@pytest.fixture(scope="module")
def encrypted_key(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(tls.client_key.read_bytes(), None)
    path = tmp_path_factory.mktemp("encrypted") / "client.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right-password"),
        )
    )
    return path


def test_an_encrypted_http_key_is_refused_not_prompted_for(
    tmp_path: Path, tls: TlsFiles, encrypted_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        f'[exporter.http]\ntls_cert_file = "{tls.client_cert}"\n'
        f'tls_key_file = "{encrypted_key}"\n' + CLUSTER,
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert lines == [
        f"exporter.http.tls_cert_file: the key {encrypted_key} is encrypted and no password "
        "is configured"
    ]


@pytest.mark.parametrize(
    ("password", "expected"),
    [("s3cr3t-guess", "wrong password"), (None, "no password is configured")],
)
def test_an_encrypted_kafka_key_needs_its_password(
    password: str | None,
    expected: str,
    tmp_path: Path,
    tls: TlsFiles,
    encrypted_key: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(
        tmp_path,
        CLUSTER + '[clusters.consumer_properties]\n"security.protocol" = "SSL"\n'
        f'"ssl.certificate.location" = "{tls.client_cert}"\n'
        f'"ssl.key.location" = "{encrypted_key}"\n'
        + (f'"ssl.key.password" = "{password}"\n' if password else ""),
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(
        lines, 'clusters[0].consumer_properties."ssl.key.location"', str(encrypted_key), expected
    )
    assert "s3cr3t-guess" not in "\n".join(lines)


def test_a_matching_http_tls_pair_passes_check(
    tmp_path: Path, tls: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        f'[exporter.http]\ntls_cert_file = "{tls.client_cert}"\n'
        f'tls_key_file = "{tls.client_key}"\n' + CLUSTER,
    )

    assert check(path, capsys)[0] == 0


def test_a_jsonl_path_that_is_a_directory_fails_check_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    path = write(
        tmp_path,
        loopback() + f'[exporter.jsonl]\nenabled = true\npath = "{directory}"\n' + CLUSTER,
    )

    code, lines = check(path, capsys)
    result = run_process(path)

    assert code == 2
    assert_rejected(lines, "exporter.jsonl.path", str(directory), "is a directory")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == lines
    assert "Traceback" not in result.stderr


def test_a_jsonl_path_under_a_file_fails_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    target = blocker / "lag.jsonl"
    path = write(tmp_path, f'[exporter.jsonl]\nenabled = true\npath = "{target}"\n' + CLUSTER)

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, "exporter.jsonl.path", str(target), f"{blocker} is not a directory")


@pytest.mark.parametrize("target", ["-", "new-dir/deeper/lag.jsonl"])
def test_stdout_and_creatable_jsonl_paths_pass_check(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = target if target == "-" else str(tmp_path / target)
    path = write(tmp_path, f'[exporter.jsonl]\nenabled = true\npath = "{where}"\n' + CLUSTER)

    assert check(path, capsys)[0] == 0
    assert not (tmp_path / "new-dir").exists()  # check creates nothing


def test_a_missing_ssl_ca_location_names_the_property_and_file_in_check_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "x" / "ca.pem"
    path = write(
        tmp_path,
        loopback()
        + CLUSTER
        + '[clusters.consumer_properties]\n"security.protocol" = "SSL"\n'
        + f'"ssl.ca.location" = "{ca}"\n',
    )

    code, lines = check(path, capsys)
    result = run_process(path)

    expected = (
        f'clusters[0].consumer_properties."ssl.ca.location": cannot read {ca}: '
        "no such file or directory"
    )
    assert code == 2
    assert lines == [expected]
    assert result.returncode == 2
    assert result.stderr.splitlines() == [expected]


def test_kafka_tls_files_that_do_not_load_name_the_property(
    tmp_path: Path, tls: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    path = write(
        tmp_path,
        CLUSTER + '[clusters.consumer_properties]\n"security.protocol" = "SSL"\n'
        f'"ssl.ca.location" = "{garbage}"\n'
        '[[clusters]]\nname = "other"\nbootstrap_servers = "127.0.0.1:9"\n'
        '[clusters.consumer_properties]\n"security.protocol" = "SSL"\n'
        f'"ssl.certificate.location" = "{tls.ca_cert}"\n'
        f'"ssl.key.location" = "{tls.client_key}"\n',
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, 'clusters[0].consumer_properties."ssl.ca.location"', str(garbage))
    assert_rejected(
        lines,
        'clusters[1].consumer_properties."ssl.key.location"',
        str(tls.ca_cert),
        str(tls.client_key),
    )


def test_keytab_and_token_file_problems_name_property_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token.jwt"
    path = write(
        tmp_path,
        CLUSTER + '[clusters.consumer_properties]\n"security.protocol" = "SASL_PLAINTEXT"\n'
        '"sasl.mechanism" = "GSSAPI"\n'
        f'"sasl.kerberos.keytab" = "{tmp_path}"\n'
        '[[clusters]]\nname = "oauth"\nbootstrap_servers = "127.0.0.1:9"\n'
        '[clusters.consumer_properties]\n"security.protocol" = "SASL_PLAINTEXT"\n'
        '"sasl.mechanism" = "OAUTHBEARER"\n'
        f'"sasl.oauthbearer.token.endpoint.url" = "file://{token}"\n',
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(
        lines,
        'clusters[0].consumer_properties."sasl.kerberos.keytab"',
        str(tmp_path),
        "is a directory",
    )
    assert_rejected(
        lines,
        'clusters[1].consumer_properties."sasl.oauthbearer.token.endpoint.url"',
        str(token),
        "no such file",
    )


def test_otlp_tls_files_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "otel-ca.pem"
    path = write(
        tmp_path,
        '[exporter.otel]\nenabled = true\nendpoint = "https://127.0.0.1:4317"\n'
        f'certificate_file = "{ca}"\n' + CLUSTER,
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, "exporter.otel.certificate_file", str(ca), "no such file")


def test_a_missing_kubeconfig_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    path = write(
        tmp_path,
        f'[exporter.leadership]\nenabled = true\nkubeconfig = "{kubeconfig}"\n' + CLUSTER,
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, "exporter.leadership.kubeconfig", str(kubeconfig), "no such file")


# --- names and values ----------------------------------------------------------------------


def test_a_nul_byte_in_a_cluster_name_fails_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[[clusters]]\nname = "prod\\u0000x"\nbootstrap_servers = "h:1"\n')

    code, lines = check(path, capsys)

    assert code == 2
    assert lines == [
        "clusters[0].name: must not contain control characters (found '\\x00' at position 4)"
    ]


def test_control_characters_in_labels_and_otlp_headers_are_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        '[exporter.otel.headers]\n"x-tenant" = "a\\r\\nInjected: 1"\n'
        + CLUSTER
        + '[clusters.labels]\nteam = "core\\nops"\n',
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, "exporter.otel.headers.x-tenant", "control characters")
    assert_rejected(lines, "clusters[0].labels.team", "control characters")


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("poll_interval", '"1ms"', "must be between 100ms and 1d, got 1ms"),
        (
            "poll_interval",
            '"99999999999999999999999999w"',
            "must be between 100ms and 1d, got 99999999999999999999999999w",
        ),
        ("poll_interval", '"' + "9" * 400 + 's"', "must be between 100ms and 1d, got 9999"),
        ("staleness_threshold", '"30d"', "must be between 100ms and 7d, got 30d"),
    ],
)
def test_durations_out_of_range_fail_check_and_run(
    setting: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, f"[exporter]\n{setting} = {value}\n" + CLUSTER)

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, f"exporter.{setting}", message)


def test_a_1ms_poll_interval_fails_run_at_start_up(tmp_path: Path) -> None:
    path = write(tmp_path, loopback() + 'poll_interval = "1ms"\n' + CLUSTER)

    result = run_process(path)

    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        "exporter.poll_interval: must be between 100ms and 1d, got 1ms"
    ]


def test_1e11_concurrent_fetches_fail_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "[exporter.timestamp_sampling]\nmax_concurrent_fetches = 100000000000\n" + CLUSTER,
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert lines == [
        "exporter.timestamp_sampling.max_concurrent_fetches: must be at least 1 and at most "
        "1000, got 100000000000"
    ]


def test_every_problem_is_listed_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Value problems, a bad cluster and file problems in one pass, each once."""
    ca = tmp_path / "ca.pem"
    path = write(
        tmp_path,
        '[exporter]\npoll_interval = "1ms"\n'
        f'[exporter.jsonl]\nenabled = true\npath = "{tmp_path}"\n'
        '[[clusters]]\nname = "a\\u0007"\nbootstrap_servers = "h:1"\n'
        '[clusters.consumer_properties]\n"security.protocol" = "SSL"\n'
        f'"ssl.ca.location" = "{ca}"\n',
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert [line.split(": ")[0] for line in lines] == [
        "exporter.poll_interval",
        "clusters[0].name",
        'clusters[0].consumer_properties."ssl.ca.location"',
        "exporter.jsonl.path",
    ]
