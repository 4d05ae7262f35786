"""The API gate's script, run for real against a local HTTPS API server that answers as scripted.

Its python3 loop must see the answers in a row it promises, with the cluster CA it is given, ask for
the OpenAPI document as admin.conf's user and as the Kubernetes provider does (protobuf), and fail
with one clear line otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from components.artifacts import render
from components.config import tolerances
from components.config.settings import ClusterConfig
from tests.conftest import cluster_config
from tests.standins import StandInNode

SUDO = '#!/bin/bash\nexec "$@"\n'
CRICTL = "#!/bin/bash\nexit 0\n"
OPENAPI_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


class ApiServer:
    """/readyz answers the scripted statuses in turn, then the last one for ever; /openapi/v2 answers
    200 to a protobuf request unless `openapi_down`. Every request must carry the admin's certificate."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.asked = 0
        self.openapi_accepts: list[str] = []
        self.openapi_down = False

    def readyz(self) -> int:
        status = self.statuses[min(self.asked, len(self.statuses) - 1)]
        self.asked += 1
        return status

    def openapi(self, accept: str) -> int:
        self.openapi_accepts.append(accept)
        return 503 if self.openapi_down else 200 if accept == OPENAPI_PROTOBUF else 406


def self_signed(directory: Path, name: str, san: str | None = None) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    extra = ["-addext", f"subjectAltName={san}"] if san else []
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", f"/CN={name}", *extra, "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    """The API server's certificate for 127.0.0.1: its own CA, as the cluster CA is here."""
    return self_signed(tmp_path, "kube-apiserver", "IP:127.0.0.1")


@pytest.fixture
def admin(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path, "kubernetes-admin")


def serve_to_admin(
    handler: type[http.server.BaseHTTPRequestHandler], tls: tuple[Path, Path], admin: tuple[Path, Path]
) -> http.server.ThreadingHTTPServer:
    """An HTTPS server on 127.0.0.1 with `tls` as its certificate that requires the admin's client certificate."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(admin[0]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def api(
    request: pytest.FixtureRequest, tls: tuple[Path, Path], admin: tuple[Path, Path]
) -> Iterator[tuple[ApiServer, str]]:
    server_state = ApiServer(request.param)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/readyz":
                status = server_state.readyz()
            elif self.path == "/openapi/v2":
                status = server_state.openapi(self.headers.get("Accept", ""))
            else:
                status = 404
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"no")

        def log_message(self, *args: object) -> None:
            pass

    server = serve_to_admin(Handler, tls, admin)
    yield server_state, f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def admin_conf(directory: Path, admin: tuple[Path, Path]) -> Path:
    """admin.conf's user part, as kubeadm writes it: the certificate and key inline, base64."""
    cert, key = (base64.b64encode(p.read_bytes()).decode() for p in admin)
    conf = directory / "admin.conf"
    conf.write_text(f"users:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {cert}\n"
                    f"    client-key-data: {key}\n")  # fmt: skip
    return conf


def quick_config(ssh_key: Path, interval: int) -> ClusterConfig:
    """The air stack's settings with a quick gate: 3 answers `interval` s apart, 4 s at most."""
    quick = dataclasses.replace(
        tolerances.EMULATED, api_steady_checks=3, api_steady_interval_seconds=interval, api_steady_timeout_seconds=4
    )
    return dataclasses.replace(cluster_config(ssh_key, domainType="qemu"), tolerances=quick)


def run_gate(
    tmp_path: Path,
    ssh_key: Path,
    api: tuple[ApiServer, str],
    ca: Path,
    admin: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    interval: int = 0,
) -> subprocess.CompletedProcess[str]:
    """The gate as rendered for the air stack, pointed at the local server."""
    point_at_test_files(tmp_path, ca, admin, monkeypatch)
    config = quick_config(ssh_key, interval)
    script = render.api_steady_script(config)
    assert f"{config.api_endpoint}/readyz" in script, "the gate asks the control plane's advertised address"
    script = script.replace(config.api_endpoint, api[1])
    return StandInNode.make(tmp_path, {"sudo": SUDO, "crictl": CRICTL}, script, "").run()


def point_at_test_files(tmp_path: Path, ca: Path, admin: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "CLUSTER_CA", str(ca))
    monkeypatch.setattr(render, "ADMIN_CONF", str(admin_conf(tmp_path, admin)))
    monkeypatch.setattr(render, "WATCH_PROGRAM", str(tmp_path / "api-watch.py"))
    monkeypatch.setattr(render, "WATCH_DIRECTORY", str(tmp_path / "run"))


Gate = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def gate(
    tmp_path: Path,
    ssh_key: Path,
    api: tuple[ApiServer, str],
    tls: tuple[Path, Path],
    admin: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Gate:
    """Runs the gate against `api`, trusting `ca` (the server's own) and presenting `client` (the admin)."""

    def run(
        ca: Path | None = None, client: tuple[Path, Path] | None = None, interval: int = 0
    ) -> subprocess.CompletedProcess[str]:
        return run_gate(tmp_path, ssh_key, api, ca or tls[0], client or admin, monkeypatch, interval)

    return run


@pytest.mark.parametrize("api", [[500, 500, 200]], indirect=True)
def test_the_gate_opens_after_answers_in_a_row_and_the_document_served(api: tuple[ApiServer, str], gate: Gate) -> None:
    result = gate()
    assert result.returncode == 0, result.stderr
    # The seconds are wall time, which a busy host stretches (CI once saw "waited 1 s"); the counts are exact.
    assert re.search(
        r"steady \(3 answers in a row after 2 failed; waited [0-3] s; OpenAPI served after [0-3] s more\)",
        result.stdout,
    ), result.stdout
    assert api[0].asked >= 5
    # The watch warms the document up as soon as /readyz answers, the gate checks it comes in time:
    # both as client-go's discovery asks, so the API server caches the form the provider reads.
    assert len(api[0].openapi_accepts) >= 2 and set(api[0].openapi_accepts) == {OPENAPI_PROTOBUF}


@pytest.mark.parametrize("api", [[200, 200, 500, 200, 500] * 20], indirect=True)
def test_an_api_server_that_keeps_failing_closes_the_gate_with_one_line(api: tuple[ApiServer, str], gate: Gate) -> None:
    result = gate()
    assert result.returncode == 1
    assert "did not answer /readyz 3 times in a row within 4 s" in result.stderr
    assert len(api[0].openapi_accepts) == 1, "only the warm-up: the gate never got as far as the check"


@pytest.mark.parametrize("api", [[200]], indirect=True)
def test_an_openapi_document_never_served_closes_the_gate(api: tuple[ApiServer, str], gate: Gate) -> None:
    api[0].openapi_down = True
    result = gate()
    assert result.returncode == 1
    assert "did not serve /openapi/v2 within 20 s" in result.stderr


@pytest.mark.parametrize("api", [[200]], indirect=True)
def test_an_api_server_the_cluster_ca_did_not_sign_is_never_ready(
    tmp_path: Path, api: tuple[ApiServer, str], gate: Gate
) -> None:
    other_ca, _ = self_signed(tmp_path, "other")
    result = gate(ca=other_ca)
    assert result.returncode == 1
    assert api[0].asked == 0, "no request passes the TLS handshake"


@pytest.mark.parametrize("api", [[200]], indirect=True)
def test_without_the_admins_certificate_nothing_is_answered(
    tmp_path: Path, api: tuple[ApiServer, str], gate: Gate
) -> None:
    result = gate(client=self_signed(tmp_path, "stranger"))
    assert result.returncode == 1
    assert api[0].asked == 0 and not api[0].openapi_accepts


def start_watch(tmp_path: Path, ssh_key: Path, url: str, interval: int) -> Path:
    """Starts the API watch as kubeadm init does (the test files already pointed at); returns its log."""
    config = quick_config(ssh_key, interval)
    program = Path(render.WATCH_PROGRAM)
    program.write_text(render.api_watch_program(config).replace(config.api_endpoint, url))
    subprocess.run([sys.executable, str(program), "start"], check=True, timeout=10)
    return Path(render.WATCH_DIRECTORY) / "api-watch.log"


def answers_logged(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines() if line.split()[1] in ("ok", "fail")]


@pytest.fixture
def pointed(tmp_path: Path, tls: tuple[Path, Path], admin: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered program's files (CA, admin.conf, its own directory) are the test's."""
    point_at_test_files(tmp_path, tls[0], admin, monkeypatch)


@pytest.mark.parametrize("api", [[200]], indirect=True)
@pytest.mark.usefixtures("pointed")
def test_answers_given_while_init_ran_open_the_gate_at_once(
    tmp_path: Path, ssh_key: Path, api: tuple[ApiServer, str], gate: Gate
) -> None:
    log = start_watch(tmp_path, ssh_key, api[1], interval=1)
    deadline = time.monotonic() + 10
    while answers_logged(log).count("ok") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    started = time.monotonic()
    result = gate(interval=1)
    assert result.returncode == 0, result.stderr
    # Three fresh answers 1 s apart were in: a gate that asked anew would need 2 s at least.
    assert time.monotonic() - started < 1.5
    assert re.search(r"3 answers in a row after 0 failed; waited [01] s", result.stdout), result.stdout


@pytest.mark.parametrize("api", [[500]], indirect=True)
@pytest.mark.usefixtures("pointed")
def test_answers_of_a_watch_that_ended_are_no_streak(api: tuple[ApiServer, str], gate: Gate) -> None:
    log = Path(render.WATCH_DIRECTORY) / "api-watch.log"
    log.parent.mkdir(parents=True)
    now = time.time()
    log.write_text("".join(f"{now - 3 + i:.3f} ok\n" for i in range(3)))  # an earlier watch's answers
    result = gate()
    assert result.returncode == 1, "the API server answers 500 now"
    assert "did not answer /readyz 3 times in a row" in result.stderr
    assert "ok" not in answers_logged(log)
