"""The API gate's script, run for real against a local HTTPS /readyz that answers as scripted.

Its python3 loop must see the answers in a row it promises, with the cluster CA it is given, and
fail with one clear line otherwise; kubectl (a stand-in) only fetches the OpenAPI document.
"""

from __future__ import annotations

import dataclasses
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.artifacts import render
from components.config import tolerances
from components.config.settings import ClusterConfig
from tests.conftest import cluster_config
from tests.standins import StandInNode

SUDO = '#!/bin/bash\nexec "$@"\n'
CRICTL = "#!/bin/bash\nexit 0\n"
# Serves /openapi/v2 unless OPENAPI_DOWN is set; records each call.
KUBECTL = """#!/bin/bash
printf '%s\\n' "$*" >> "${ROOT}/kubectl-calls"
[ -z "${OPENAPI_DOWN:-}" ] || exit 1
case "$*" in
  *"explain pods --output=plaintext-openapiv2") echo 'KIND: Pod' ;;
  *) exit 2 ;;
esac
"""


class Readyz:
    """/readyz answers: the scripted statuses in turn, then the last one for ever."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.asked = 0

    def next_status(self) -> int:
        status = self.statuses[min(self.asked, len(self.statuses) - 1)]
        self.asked += 1
        return status


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: it is its own CA, as the cluster CA is here."""
    cert, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=kube-apiserver", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def readyz(request: pytest.FixtureRequest, tls: tuple[Path, Path]) -> Iterator[tuple[Readyz, str]]:
    answers = Readyz(request.param)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = answers.next_status() if self.path == "/readyz" else 404
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"not ready")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield answers, f"https://127.0.0.1:{server.server_address[1]}/readyz"
    server.shutdown()


def gate_script(config: ClusterConfig, url: str, ca: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(render, "CLUSTER_CA", str(ca))
    quick = dataclasses.replace(
        tolerances.EMULATED, api_steady_checks=3, api_steady_interval_seconds=0, api_steady_timeout_seconds=4
    )
    script = render.api_steady_script(dataclasses.replace(config, tolerances=quick))
    rendered_url = f"{config.api_endpoint}/readyz"
    assert rendered_url in script, "the gate asks the control plane's advertised address"
    return script.replace(rendered_url, url)


def run_gate(
    tmp_path: Path,
    ssh_key: Path,
    readyz: tuple[Readyz, str],
    tls: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    **env: str,
) -> tuple[subprocess.CompletedProcess[str], StandInNode]:
    script = gate_script(cluster_config(ssh_key, domainType="qemu"), readyz[1], tls[0], monkeypatch)
    node = StandInNode.make(tmp_path, {"sudo": SUDO, "kubectl": KUBECTL, "crictl": CRICTL}, script, "")
    return node.run(**env), node


@pytest.mark.parametrize("readyz", [[500, 500, 200]], indirect=True)
def test_the_gate_opens_after_answers_in_a_row(
    tmp_path: Path, ssh_key: Path, readyz: tuple[Readyz, str], tls: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, node = run_gate(tmp_path, ssh_key, readyz, tls, monkeypatch)
    assert result.returncode == 0, result.stderr
    assert "steady (3 answers in a row after 2 failed, in 0 s; OpenAPI served after 0 s more)" in result.stdout
    assert readyz[0].asked == 5
    # One request warms the document up while /readyz is asked, one checks it comes in time.
    assert (node.root / "kubectl-calls").read_text().count("explain pods --output=plaintext-openapiv2") == 2


@pytest.mark.parametrize("readyz", [[200, 200, 500, 200, 500] * 20], indirect=True)
def test_an_api_server_that_keeps_failing_closes_the_gate_with_one_line(
    tmp_path: Path, ssh_key: Path, readyz: tuple[Readyz, str], tls: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, node = run_gate(tmp_path, ssh_key, readyz, tls, monkeypatch)
    assert result.returncode == 1
    assert "did not answer /readyz 3 times in a row within 4 s" in result.stderr
    # Only the warm-up asked for the document: the gate never got as far as checking it.
    assert (node.root / "kubectl-calls").read_text().count("explain pods --output=plaintext-openapiv2") == 1


@pytest.mark.parametrize("readyz", [[200]], indirect=True)
def test_an_openapi_document_never_served_closes_the_gate(
    tmp_path: Path, ssh_key: Path, readyz: tuple[Readyz, str], tls: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _ = run_gate(tmp_path, ssh_key, readyz, tls, monkeypatch, OPENAPI_DOWN="1")
    assert result.returncode == 1
    assert "did not serve /openapi/v2 within 20 s" in result.stderr


@pytest.mark.parametrize("readyz", [[200]], indirect=True)
def test_a_certificate_the_cluster_ca_did_not_sign_is_never_ready(
    tmp_path: Path, ssh_key: Path, readyz: tuple[Readyz, str], tls: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=other", "-keyout", str(other / "k"), "-out", str(other / "c")],
        check=True, capture_output=True,
    )  # fmt: skip
    result, _ = run_gate(tmp_path, ssh_key, readyz, (other / "c", tls[1]), monkeypatch)
    assert result.returncode == 1
    assert readyz[0].asked == 0, "no request passes the TLS handshake"
