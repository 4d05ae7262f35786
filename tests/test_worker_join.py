"""Joining a worker: every run mints its own short-lived token on the control plane, just in time,
and revokes it again once the join has used it or failed.

The join script runs for real on this host, exactly as the program hands it to pulumi-command,
with a stand-in `ssh` on PATH that plays both nodes: the control plane answers the mint script with
a new token each time and deletes the token whose id the revoke script reads on stdin; the worker
answers the "already joined?" probe from its state and keeps what the join script receives on stdin.
Every ssh argv is recorded, to show the token is never in one.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.standins import StandInNode
from tools.dryrun import Evaluation
from tools.render import heredocs

CONTROL_PLANE = "kube@172.31.255.10"
WORKER = "kube@172.31.255.13"
CA_HASH = "sha256:" + "cd" * 32

FAKE_SSH = r"""#!/bin/bash
# Named by start time: the stale Node's deletion and the mint run side by side.
printf '%s\0' "$@" > "$STATE/argv-$(date +%s%N)-$$"
host=""
for arg in "$@"; do case "$arg" in kube@*) host=$arg ;; esac; done
command=${*: -1}
case "$host:$command" in
  "$CONTROL_PLANE:"*"kubeadm token create"*)
    [ -z "${CONTROL_PLANE_SAYS:-}" ] || { echo "$CONTROL_PLANE_SAYS"; exit 0; }
    count=$(( $(wc -l < "$STATE/minted" 2>/dev/null || echo 0) + 1 ))
    token=$(printf 'mint%02d.%016d' "$count" "$count")
    echo "$token" >> "$STATE/minted"
    printf '%s\n%s\n' "$token" "$CA_HASH" ;;
  "$CONTROL_PLANE:"*"delete secret \"bootstrap-token-"*)
    read -r id
    echo "$id" >> "$STATE/revoked"
    [ -z "${REVOKE_FAILS:-}" ] || exit 1 ;;
  "$CONTROL_PLANE:"*"delete node work13 --ignore-not-found"*)
    [ -z "${CONTROL_PLANE_DOWN:-}" ] || exit 255
    sleep "${DELETE_SECONDS:-0}"
    if [ -e "$STATE/node-work13" ]; then rm "$STATE/node-work13"; echo 'node "work13" deleted'; fi
    date +%s%N > "$STATE/deleted-at" ;;
  "$WORKER:sudo test -f /etc/kubernetes/kubelet.conf")
    [ -z "${WORKER_DOWN:-}" ] || exit 255
    [ -e "$STATE/joined" ] ;;
  "$WORKER:"*"kubeadm join --config"*)
    date +%s%N > "$STATE/join-started-at"
    cat > "$STATE/join-config-$(find "$STATE" -name 'join-config-*' | wc -l)"
    [ -z "${JOIN_FAILS:-}" ] || { echo "[preflight] kubelet did not come up" >&2; exit 1; }
    touch "$STATE/joined" ;;
  *) echo "unexpected ssh: $host: ${command:0:80}" >&2; exit 99 ;;
esac
"""


@dataclass
class Run:
    done: subprocess.CompletedProcess[str]
    state: Path

    def minted(self) -> list[str]:
        path = self.state / "minted"
        return path.read_text().split() if path.exists() else []

    def revoked(self) -> list[str]:
        path = self.state / "revoked"
        return path.read_text().split() if path.exists() else []

    def join_configs(self) -> list[str]:
        return [p.read_text() for p in sorted(self.state.glob("join-config-*"))]

    def ssh_calls(self) -> list[list[str]]:
        return [p.read_text().split("\0")[:-1] for p in sorted(self.state.glob("argv-*"))]


JoinRunner = Callable[..., Run]


def join_worker_script(air: Evaluation) -> str:
    script = air.named("work13-kubeadm-join").plain("create")
    assert isinstance(script, str)
    return script


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """What the stand-in nodes hold; a file node-work13 is a Node of that name on the control plane."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def run_join(tmp_path: Path, state: Path, air: Evaluation) -> JoinRunner:
    script = join_worker_script(air)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)

    def run(**env: str) -> Run:
        environment = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STATE": str(state),
            "CONTROL_PLANE": CONTROL_PLANE,
            "WORKER": WORKER,
            "CA_HASH": CA_HASH,
            **env,
        }
        # As pulumi-command's local.Command runs it: interpreter + the script as one argument.
        done = subprocess.run(
            ["/bin/bash", "-c", script], capture_output=True, text=True, env=environment, timeout=30, check=False
        )
        return Run(done, state)

    return run


def bootstrap_token(config: str) -> str:
    document = yaml.safe_load(config)
    assert document["discovery"]["bootstrapToken"]["caCertHashes"] == [CA_HASH]
    token = document["discovery"]["bootstrapToken"]["token"]
    assert isinstance(token, str)
    return token


def test_a_join_uses_the_token_minted_for_it_and_never_passes_it_in_argv(run_join: JoinRunner) -> None:
    run = run_join()
    assert run.done.returncode == 0, run.done.stderr
    (config,) = run.join_configs()
    assert run.minted() == [bootstrap_token(config)]
    assert yaml.safe_load(config)["nodeRegistration"]["name"] == "work13"
    calls = run.ssh_calls()
    hosts = [WORKER, CONTROL_PLANE, CONTROL_PLANE, WORKER, CONTROL_PLANE]
    assert [call[-2] for call in calls] == hosts, "probe, stale Node and mint (side by side), join, revoke"
    assert all("StrictHostKeyChecking=yes" in call and "BatchMode=yes" in call for call in calls)
    token = run.minted()[0]
    assert not any(token in arg for call in calls for arg in call)
    assert token not in run.done.stdout + run.done.stderr


def test_a_join_retried_later_mints_a_new_token(run_join: JoinRunner) -> None:
    # A first attempt that fails (its token expires unused); the next `pulumi up`, a day later, retries.
    first = run_join(JOIN_FAILS="1")
    assert first.done.returncode != 0
    again = run_join()
    assert again.done.returncode == 0, again.done.stderr
    failed_config, config = again.join_configs()
    assert again.minted() == [bootstrap_token(failed_config), bootstrap_token(config)]
    assert bootstrap_token(config) != bootstrap_token(failed_config)


def test_a_joined_worker_is_left_alone_and_no_token_is_minted(run_join: JoinRunner) -> None:
    assert run_join().done.returncode == 0
    again = run_join()
    assert again.done.returncode == 0 and again.done.stdout == "work13 already joined\n"
    assert len(again.minted()) == 1 and len(again.join_configs()) == 1


def test_an_unreachable_worker_fails_before_a_token_is_minted(run_join: JoinRunner) -> None:
    run = run_join(WORKER_DOWN="1")
    assert run.done.returncode == 1
    assert "worker 172.31.255.13 unreachable (ssh exit 255): work13 not joined" in run.done.stderr
    assert run.minted() == [] and run.join_configs() == []


@pytest.mark.parametrize("answer", ["Error: unknown flag: --ttl", "abcdef.0123456789abcdef"])
def test_malformed_credentials_stop_the_join_without_echoing_them(run_join: JoinRunner, answer: str) -> None:
    run = run_join(CONTROL_PLANE_SAYS=answer)
    assert run.done.returncode == 1
    assert "join credentials from the control plane 172.31.255.10 are malformed" in run.done.stderr
    assert answer not in run.done.stderr and run.join_configs() == []


def test_the_placeholders_are_all_replaced(run_join: JoinRunner) -> None:
    run = run_join()
    (config,) = run.join_configs()
    assert not re.search(r"KOA_[A-Z_]+", config), config


def token_id(token: str) -> str:
    return token.split(".")[0]


def test_the_token_is_revoked_after_the_join_by_its_id_on_stdin(run_join: JoinRunner) -> None:
    run = run_join()
    assert run.done.returncode == 0, run.done.stderr
    (token,) = run.minted()
    assert run.revoked() == [token_id(token)]
    assert "revoked the bootstrap token minted for the join of work13" in run.done.stdout
    revoke = run.ssh_calls()[-1]
    assert "--ignore-not-found" in revoke[-1], "revoking twice is fine"
    assert not any(token_id(token) in arg for arg in revoke), "the id travels on stdin"


def test_a_failed_join_revokes_its_token_too(run_join: JoinRunner) -> None:
    run = run_join(JOIN_FAILS="1")
    assert run.done.returncode == 1
    (token,) = run.minted()
    assert run.revoked() == [token_id(token)]


@pytest.mark.parametrize("join_fails", ["", "1"])
def test_a_failed_revoke_is_reported_and_keeps_the_joins_outcome(run_join: JoinRunner, join_fails: str) -> None:
    run = run_join(REVOKE_FAILS="1", JOIN_FAILS=join_fails)
    assert run.done.returncode == (1 if join_fails else 0), run.done.stderr
    assert "could not revoke the bootstrap token minted for the join of work13: it expires 30m" in run.done.stderr


def test_a_token_with_a_malformed_hash_is_revoked(run_join: JoinRunner) -> None:
    run = run_join(CONTROL_PLANE_SAYS="abcdef.0123456789abcdef\nsha256:nothex")
    assert run.done.returncode == 1
    assert run.revoked() == ["abcdef"] and run.join_configs() == []


def test_no_token_no_revoke(run_join: JoinRunner) -> None:
    assert run_join(WORKER_DOWN="1").revoked() == []
    assert run_join(CONTROL_PLANE_SAYS="Error: unknown flag: --ttl").revoked() == []


def test_the_hash_is_computed_before_the_token_is_minted() -> None:
    # Nothing may fail between minting the token and handing it to the join step, which revokes it.
    script = (Path(__file__).parent.parent / "templates/scripts/join-credentials.sh.j2").read_text()
    assert script.index("openssl x509") < script.index("kubeadm token create")


def test_a_stale_node_of_the_same_name_is_deleted_before_the_join(run_join: JoinRunner, state: Path) -> None:
    # A rebuilt worker (new disk, same name): the old machine's Node may still read Ready, and
    # kubeadm join refuses a name that a Ready Node holds.
    (state / "node-work13").touch()
    run = run_join()
    assert run.done.returncode == 0, run.done.stderr
    assert not (run.state / "node-work13").exists()
    commands = [call[-1] for call in run.ssh_calls()]
    assert {i for i, c in enumerate(commands) if "delete node work13" in c or "kubeadm token create" in c} == {1, 2}


def test_the_join_waits_for_the_stale_node_deleted_beside_the_mint(run_join: JoinRunner, state: Path) -> None:
    (state / "node-work13").touch()
    run = run_join(DELETE_SECONDS="1")
    assert run.done.returncode == 0, run.done.stderr
    deleted, joined = (int((state / name).read_text()) for name in ("deleted-at", "join-started-at"))
    assert joined > deleted, "kubeadm join refuses a name a Ready Node still holds"


def test_a_joined_worker_keeps_its_node(run_join: JoinRunner, state: Path) -> None:
    assert run_join().done.returncode == 0
    (state / "node-work13").touch()
    again = run_join()
    assert again.done.stdout == "work13 already joined\n"
    assert (again.state / "node-work13").exists()


def test_a_stale_node_that_cannot_be_deleted_stops_the_join_and_its_token_is_revoked(run_join: JoinRunner) -> None:
    run = run_join(CONTROL_PLANE_DOWN="1")
    assert run.done.returncode != 0
    assert "could not delete a stale Node work13" in run.done.stderr
    assert run.join_configs() == []
    assert [token.split(".")[0] for token in run.minted()] == run.revoked(), "the token minted beside it is revoked"


# The worker side, kubeadm-join.sh, run for real: a stand-in sudo moves /etc/kubernetes and
# /var/lib/kube-on-air under $ROOT; a stand-in kubeadm does what the script relies on: join's preflight
# refuses leftovers (cmd/kubeadm/app/preflight RunJoinNodeChecks: FileAvailable for pki/ca.crt,
# kubelet.conf, bootstrap-kubelet.conf; Port-10250), its kubelet-start phase writes
# bootstrap-kubelet.conf and pki/ca.crt and starts the kubelet before it checks for a Ready Node of the
# same name, and reset removes all of it.
FAKE_SUDO = r"""#!/bin/bash
args=()
for arg in "$@"; do
  arg=${arg//\/etc\/kubernetes/$ROOT/etc/kubernetes}
  args+=("${arg//\/var\/lib\/kube-on-air/$ROOT/var/lib/kube-on-air}")
done
exec "${args[@]}"
"""

FAKE_KUBEADM = r"""#!/bin/bash
set -euo pipefail
k=$ROOT/etc/kubernetes
echo "$1" >> "$ROOT/kubeadm-calls"
case "$1" in
  reset) rm -rf "$k/kubelet.conf" "$k/bootstrap-kubelet.conf" "$k/pki" "$ROOT/kubelet-running" ;;
  join)
    for leftover in "$k/pki/ca.crt" "$k/kubelet.conf" "$k/bootstrap-kubelet.conf"; do
      [ ! -e "$leftover" ] || { echo "[ERROR FileAvailable]: $leftover already exists" >&2; exit 1; }
    done
    [ ! -e "$ROOT/kubelet-running" ] || { echo "[ERROR Port-10250]: Port 10250 is in use" >&2; exit 1; }
    mkdir -p "$k/pki"
    touch "$k/bootstrap-kubelet.conf" "$k/pki/ca.crt" "$ROOT/kubelet-running"
    if [ -n "${READY_NODE_EXISTS:-}" ]; then
      echo 'a Node with name "work13" and status "Ready" already exists in the cluster' >&2
      exit 1
    fi
    touch "$k/kubelet.conf"
    rm "$k/bootstrap-kubelet.conf" ;;
  *) exit 2 ;;
esac
"""


class Worker(StandInNode):
    """A stand-in worker's file system, and kubeadm-join.sh as the join step sends it there."""

    def join(self, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(**env)


@pytest.fixture
def worker(tmp_path: Path, air: Evaluation) -> Worker:
    script = heredocs(join_worker_script(air))["ON_WORKER"]
    node = Worker.make(tmp_path, {"sudo": FAKE_SUDO, "kubeadm": FAKE_KUBEADM}, script, "kind: JoinConfiguration\n")
    node.timeout = 30
    return node


def test_a_join_that_stopped_half_way_is_reset_and_retried(worker: Worker) -> None:
    failed = worker.join(READY_NODE_EXISTS="1")
    assert failed.returncode == 1
    assert worker.has("/etc/kubernetes/pki/ca.crt") and not worker.has("/etc/kubernetes/kubelet.conf")
    again = worker.join()
    assert again.returncode == 0, again.stderr
    assert "an earlier join of work13 stopped half-way" in again.stderr
    assert worker.kubeadm_calls() == ["join", "reset", "join"]
    assert worker.has("/etc/kubernetes/kubelet.conf") and not worker.has("/var/lib/kube-on-air/join-config.yaml")


def test_a_fresh_worker_joins_without_a_reset(worker: Worker) -> None:
    assert worker.join().returncode == 0
    assert worker.join().stdout == "work13 already joined\n"
    assert worker.kubeadm_calls() == ["join"]
