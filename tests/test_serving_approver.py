"""The approver of kubelet serving certificates, run for real against a local HTTPS API server.

The CSRs are made by openssl as a kubelet makes them; the approver must approve a node asking for
its own serving certificate and leave every other request pending, saying why. Its installer and
the kubelet's serverTLSBootstrap step must be safe to run twice.
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.artifacts import render
from tests.conftest import cluster_config
from tests.standins import StandInNode
from tests.test_api_steady import SUDO, admin, admin_conf, serve_to_admin, tls  # noqa: F401 (fixtures)

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SERVING_USAGES = ["digital signature", "key encipherment", "server auth"]
NODES = {
    "head10": [("InternalIP", "172.31.250.10"), ("Hostname", "head10")],
    "work11": [("InternalIP", "172.31.250.11"), ("Hostname", "work11")],
}


def kubelet_csr(tmp_path: Path, cn: str, san: str) -> str:
    """A CSR as a kubelet's serving bootstrap makes it, base64 as the API holds it."""
    key, request = tmp_path / f"{cn}-{san}.key", tmp_path / f"{cn}-{san}.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", f"/O=system:nodes/CN={cn}", "-addext", f"subjectAltName={san}", "-keyout", str(key),
         "-out", str(request)],
        check=True, capture_output=True,
    )  # fmt: skip
    return base64.b64encode(request.read_bytes()).decode()


def csr(name: str, user: str, request: str, approved: bool = False) -> dict[str, Any]:
    groups = ["system:nodes", "system:authenticated"] if user.startswith("system:node:") else ["kubeadm:cluster-admins"]
    status = {"conditions": [{"type": "Approved", "status": "True"}]} if approved else {}
    return {
        "metadata": {"name": name},
        "spec": {
            "signerName": "kubernetes.io/kubelet-serving",
            "username": user,
            "groups": groups,
            "usages": SERVING_USAGES,
            "request": request,
        },
        "status": status,
    }


class CsrApi:
    """Lists the CSRs it holds, answers Nodes from NODES, records each approval."""

    def __init__(self, csrs: list[dict[str, Any]]) -> None:
        self.csrs = {c["metadata"]["name"]: c for c in csrs}
        self.selectors: list[str] = []
        self.approved: list[str] = []
        self.approvals: list[dict[str, Any]] = []

    def get(self, path: str) -> tuple[int, Any]:
        url = urllib.parse.urlsplit(path)
        if url.path == CSRS:
            self.selectors += urllib.parse.parse_qs(url.query).get("fieldSelector", [])
            return 200, {"items": list(self.csrs.values())}
        node = url.path.removeprefix("/api/v1/nodes/")
        if node in NODES:
            addresses = [{"type": t, "address": a} for t, a in NODES[node]]
            return 200, {"metadata": {"name": node}, "status": {"addresses": addresses}}
        return 404, {"kind": "Status", "code": 404}

    def put(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        name = path.removeprefix(CSRS + "/").removesuffix("/approval")
        if not path.endswith("/approval") or name not in self.csrs:
            return 404, {}
        self.approved.append(name)
        self.approvals.append(body)
        self.csrs[name] = body
        return 200, body


@pytest.fixture
def api(tmp_path: Path, tls: tuple[Path, Path], admin: tuple[Path, Path]) -> Iterator[tuple[CsrApi, str]]:  # noqa: F811
    state = CsrApi([])

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.answer(*state.get(self.path))

        def do_PUT(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.answer(*state.put(self.path, body))

        def log_message(self, *args: object) -> None:
            pass

    server = serve_to_admin(Handler, tls, admin)
    yield state, f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def approver(
    tmp_path: Path,
    ssh_key: Path,
    api: tuple[CsrApi, str],
    tls: tuple[Path, Path],  # noqa: F811
    admin: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """The program as rendered for the air stack, pointed at the local server and the test's files."""
    monkeypatch.setattr(render, "CLUSTER_CA", str(tls[0]))
    monkeypatch.setattr(render, "ADMIN_CONF", str(admin_conf(tmp_path, admin)))
    config = cluster_config(ssh_key)
    program = render.serving_approver_program(config)
    assert repr(config.api_endpoint).replace("'", '"') in program, "it asks the control plane's advertised address"
    path = tmp_path / "serving-approver.py"
    path.write_text(program.replace(config.api_endpoint, api[1]))
    return path


def one_pass(program: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(program), "once"], capture_output=True, text=True, timeout=60)


def test_a_node_asking_for_its_own_serving_certificate_is_approved(
    tmp_path: Path, api: tuple[CsrApi, str], approver: Path
) -> None:
    own = kubelet_csr(tmp_path, "system:node:work11", "DNS:work11,IP:172.31.250.11")
    api[0].csrs = {"csr-own": csr("csr-own", "system:node:work11", own)}
    result = one_pass(approver)
    assert result.returncode == 0, result.stderr
    assert api[0].approved == ["csr-own"]
    (condition,) = api[0].approvals[0]["status"]["conditions"]
    assert condition["type"] == "Approved" and condition["status"] == "True"
    assert api[0].selectors == ["spec.signerName=kubernetes.io/kubelet-serving"], "only serving certificates"
    assert "approved csr-own of system:node:work11" in result.stdout


def test_every_other_request_stays_pending_and_is_said(tmp_path: Path, api: tuple[CsrApi, str], approver: Path) -> None:
    as_work11 = "system:node:work11"
    api[0].csrs = {
        c["metadata"]["name"]: c
        for c in (
            # another node's address: a worker must not get a certificate for the control plane's IP
            csr("csr-address", as_work11, kubelet_csr(tmp_path, as_work11, "DNS:work11,IP:172.31.250.10")),
            # another node's name in the subject
            csr("csr-subject", as_work11, kubelet_csr(tmp_path, "system:node:head10", "DNS:head10")),
            # a name its Node does not report
            csr("csr-name", as_work11, kubelet_csr(tmp_path, as_work11, "DNS:kubernetes.default")),
            # not asked by a node
            csr("csr-admin", "kubernetes-admin", kubelet_csr(tmp_path, as_work11, "DNS:work11")),
            # a node with no Node object
            csr("csr-ghost", "system:node:work99", kubelet_csr(tmp_path, "system:node:work99", "DNS:work99")),
        )
    }
    result = one_pass(approver)
    assert result.returncode == 0, result.stderr
    assert api[0].approved == []
    pending = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("left ")}
    assert sorted(pending) == ["csr-address", "csr-admin", "csr-ghost", "csr-name", "csr-subject"]
    assert "172.31.250.10" in pending["csr-address"] and "not all reported by Node work11" in pending["csr-address"]
    assert "CN=system:node:head10" in pending["csr-subject"]
    assert "kubernetes.default" in pending["csr-name"]
    assert "not by a node" in pending["csr-admin"]
    assert "no Node work99" in pending["csr-ghost"]


def test_a_request_decided_before_is_left_alone(tmp_path: Path, api: tuple[CsrApi, str], approver: Path) -> None:
    own = kubelet_csr(tmp_path, "system:node:head10", "DNS:head10,IP:172.31.250.10")
    api[0].csrs = {"csr-done": csr("csr-done", "system:node:head10", own, approved=True)}
    result = one_pass(approver)
    assert result.returncode == 0, result.stderr
    assert api[0].approved == [] and result.stdout == ""


def test_the_installer_restarts_the_approver_only_when_it_changed(
    tmp_path: Path, ssh_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "APPROVER_PROGRAM", str(tmp_path / "lib" / "serving-approver.py"))
    monkeypatch.setattr(render, "SYSTEMD_UNITS", str(tmp_path))
    config = cluster_config(ssh_key)
    calls = tmp_path / "systemctl-calls"
    systemctl = f'#!/bin/bash\necho "$*" >> {calls}\n'
    node = StandInNode.make(tmp_path, {"sudo": SUDO, "systemctl": systemctl}, "", "")
    node.script = render.install_serving_approver_script(config)
    first, second = node.run(), node.run()
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "(re)started" in first.stdout and "unchanged" in second.stdout
    restarts = [line for line in calls.read_text().splitlines() if line.startswith("restart")]
    assert restarts == [f"restart {render.APPROVER_UNIT}"], "restarted once, by the first run"
    # The program arrives through a quoted heredoc: byte for byte what was rendered.
    installed = (tmp_path / "lib" / "serving-approver.py").read_text()
    assert installed == render.serving_approver_program(config) + "\n"
    unit = (tmp_path / render.APPROVER_UNIT).read_text()
    assert f"ExecStart=/usr/bin/python3 {render.APPROVER_PROGRAM} run" in unit and "Restart=always" in unit


def test_the_kubelet_asks_for_a_serving_certificate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubelet_config = tmp_path / "config.yaml"
    kubelet_config.write_text("kind: KubeletConfiguration\nserverTLSBootstrap: false\nrotateCertificates: true\n")
    monkeypatch.setattr(render, "KUBELET_CONFIG", str(kubelet_config))
    calls = tmp_path / "systemctl-calls"
    systemctl = f'#!/bin/bash\necho "$*" >> {calls}\n'
    node = StandInNode.make(tmp_path, {"sudo": SUDO, "systemctl": systemctl}, render.kubelet_serving_script(), "")
    first, second = node.run(), node.run()
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    lines = kubelet_config.read_text().splitlines()
    assert lines.count("serverTLSBootstrap: true") == 1 and "serverTLSBootstrap: false" not in lines
    assert "rotateCertificates: true" in lines
    assert calls.read_text().splitlines() == ["restart kubelet"], "the kubelet restarted by the first run only"
