"""The Kubernetes provider's credentials: a ServiceAccount token, not admin.conf's one-year certificate.

The control-plane script runs here exactly as the program hands it to pulumi-command, against a
recording stand-in kubectl (tests/stand-in-kubectl.sh) and a `sudo` that just runs the command.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
import yaml

from components.artifacts import access
from components.config import settings as config
from tests.validators import validate_manifest
from tools.dryrun import FAKE_CA_DATA, FAKE_PROVIDER_ACCESS, Evaluation

STAND_IN_KUBECTL = Path(__file__).with_name("stand-in-kubectl.sh")
CLUSTER = "kube-on-air-air"
SERVER = "https://172.31.255.10:6443"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmVk"
INSTANT = '#!/bin/bash\nprintf \'%s\\n\' "$*" >> "${STAND_IN_STATE}/sleeps"\n'


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    state: Path

    def lines(self, name: str) -> list[str]:
        path = self.state / name
        return path.read_text().splitlines() if path.exists() else []


class RunScript(Protocol):
    def __call__(self, token_delay: str = "0", api_down: int = 0) -> Run: ...


@pytest.fixture
def run_script(air: Evaluation, tmp_path: Path) -> RunScript:
    script = air.named("kube-on-air-control-plane-kubeconfig").plain("create")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").symlink_to(STAND_IN_KUBECTL)
    (bin_dir / "sudo").write_text('#!/bin/bash\nexec "$@"\n')
    (bin_dir / "sleep").write_text(INSTANT)  # the wait loop's pauses, counted instead of slept
    for tool in ("sudo", "sleep"):
        (bin_dir / tool).chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()

    def run(token_delay: str = "0", api_down: int = 0) -> Run:
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STAND_IN_STATE": str(state),
            "STAND_IN_CLUSTER": CLUSTER,
            "STAND_IN_SERVER": SERVER,
            "STAND_IN_CA": FAKE_CA_DATA,
            "STAND_IN_SECRET_NAMESPACE": access.ACCESS_NAMESPACE,
            "STAND_IN_SECRET": access.TOKEN_SECRET,
            "STAND_IN_TOKEN": TOKEN,
            "STAND_IN_TOKEN_DELAY": token_delay,
            "STAND_IN_API_DOWN": str(api_down),
        }
        result = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
        return Run(result, state)

    return run


def test_the_provider_gets_a_service_account_token_and_admin_confs_cluster(run_script: RunScript) -> None:
    runs = [run_script() for _ in range(2)]
    for run in runs:
        assert run.result.returncode == 0, run.result.stderr
    assert runs[0].result.stdout == runs[1].result.stdout, "a second run prints the same credentials"
    assert runs[0].result.stdout.splitlines() == [CLUSTER, SERVER, FAKE_CA_DATA, TOKEN]
    kubeconfig = yaml.safe_load(access.provider_kubeconfig(runs[0].result.stdout))
    (user,) = kubeconfig["users"]
    assert user["user"] == {"token": TOKEN}, "no client certificate: nothing in it expires after a year"
    (cluster,) = kubeconfig["clusters"]
    assert cluster == {"name": CLUSTER, "cluster": {"certificate-authority-data": FAKE_CA_DATA, "server": SERVER}}
    calls = runs[0].lines("calls")
    assert all(call.startswith("--kubeconfig /etc/kubernetes/admin.conf ") for call in calls)
    assert not any(TOKEN in call for call in calls), "the token never reaches a command line"


def test_the_applied_objects_make_a_cluster_admin_token_that_is_never_cleaned_up(run_script: RunScript) -> None:
    run = run_script()
    assert run.result.returncode == 0, run.result.stderr
    applied = list(yaml.safe_load_all((run.state / "applied.yaml").read_text()))
    assert applied == access.access_objects()
    account, binding, secret = applied
    assert "secrets" not in account, "the legacy-token cleaner deletes only Secrets a ServiceAccount lists"
    assert binding["roleRef"]["name"] == "cluster-admin"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": access.SERVICE_ACCOUNT, "namespace": "kube-system"}
    ]
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {"kubernetes.io/service-account.name": access.SERVICE_ACCOUNT}
    for minor in (config.MIN_KUBERNETES_MINOR, config.MAX_KUBERNETES_MINOR):
        for obj in applied:
            assert validate_manifest(obj, f"1.{minor}.0", "provider access") == []


def test_the_script_waits_for_the_token_controller(run_script: RunScript) -> None:
    run = run_script(token_delay="3")
    assert run.result.returncode == 0, run.result.stderr
    assert run.result.stdout.splitlines()[-1] == TOKEN
    assert run.lines("sleeps") == ["1", "1", "1"]


def test_the_script_waits_for_an_api_server_that_just_booted(run_script: RunScript) -> None:
    # Seen after a control-plane resize: run right after the reboot, kubectl apply met no API server.
    run = run_script(api_down=2)
    assert run.result.returncode == 0, run.result.stderr
    assert run.result.stdout.splitlines()[-1] == TOKEN
    assert run.lines("sleeps") == ["5", "5"], "asked again every 5 s, before anything is applied"
    assert run.lines("calls")[:3] == ["--kubeconfig /etc/kubernetes/admin.conf get --raw /readyz"] * 3


def test_a_token_that_never_comes_is_one_clear_error(run_script: RunScript) -> None:
    run = run_script(token_delay="never")
    assert run.result.returncode == 1
    assert run.result.stdout == "", "nothing half-printed for the provider"
    assert f"secret kube-system/{access.TOKEN_SECRET} has no token after 60 s" in run.result.stderr
    assert len(run.lines("sleeps")) == 60


@pytest.mark.parametrize(
    "printed",
    [
        "",
        FAKE_PROVIDER_ACCESS.replace("https://", "http://"),
        FAKE_PROVIDER_ACCESS.replace(FAKE_CA_DATA, "bm90IGEgY2VydA=="),
        FAKE_PROVIDER_ACCESS + "extra\n",
        FAKE_PROVIDER_ACCESS.replace("kube-on-air-air\n", "kube on air\n"),
    ],
)
def test_malformed_credentials_are_refused_without_repeating_them(printed: str) -> None:
    with pytest.raises(ValueError) as caught:
        access.provider_kubeconfig(printed)
    assert "malformed" in str(caught.value)
    assert "eyJ" not in str(caught.value)
