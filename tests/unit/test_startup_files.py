"""``check`` rejects what ``run`` rejects (issue 18, defect 6): every file the process opens.

Each case goes through the command line as an operator would and asserts exit code 2 and a
``dotted.path: message`` line naming the setting and the file. The ``run`` cases start the real
``klag-pipeline run`` process: before the fix some of them started exporting instead of exiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.kafka_local import TlsFiles, generate_tls_files
from tests.support.startup import (
    CLUSTER,
    assert_rejected,
    check,
    loopback,
    restored_logging,
    run_process,
    write,
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield from restored_logging()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_tls_files(tmp_path_factory.mktemp("tls"))


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
