"""A worker's drain before its VM stops, its return to service after, and the engine's order.

The scripts run for real, as the program hands them to pulumi-command, through a stand-in `ssh` that
runs the control plane's part here and a stand-in `kubectl` that keeps Nodes in files.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from pathlib import Path

import pytest

from components.artifacts import hostkeys, render
from components.cluster import one_at_a_time
from components.config import tolerances
from tests.conftest import cluster_config
from tests.standins import stand_in
from tools.dryrun import Evaluation

# Runs the control plane's part (the last argument) here, as the control plane's shell would.
SSH = '#!/bin/bash\n[ -e "$STATE/unreachable" ] && exit 255\nexec bash -c "${@: -1}"\n'
SUDO = '#!/bin/bash\nexec "$@"\n'
KUBECTL = r"""#!/bin/bash
args=" $* "
log() { echo "$*" >> "$STATE/calls"; }
case "${args}" in
  *" get --raw /readyz "*) [ ! -e "$STATE/api-down" ] ;;
  *" get node "*)
    node=${args#* get node }; node=${node%% *}
    [ -e "$STATE/unanswered-${node}" ] && exit 1
    if [ ! -e "$STATE/nodes/${node}" ]; then [[ ${args} == *--ignore-not-found* ]]; exit; fi
    [[ ${args} == *Ready* ]] && tr -d '\n' < "$STATE/nodes/${node}"
    [[ ${args} == *"-o name"* ]] && echo "node/${node}"
    true ;;
  *" cordon "* | *" drain "* | *" uncordon "*)
    verb=${args#* --request-timeout=20s }; log "${verb% }" ;;
  *) echo "stand-in kubectl: unexpected: $*" >&2; exit 2 ;;
esac
"""


Scripts = dict[str, tuple[str, str]]


def program_scripts(air: Evaluation) -> Scripts:
    """worker -> (its drain, its return to service), as the program hands them to pulumi-command."""
    commands = {name: air.named(f"{name}-kubeadm-in-service") for name in ("work11", "work12", "work13")}
    return {name: (str(c.plain("delete")), str(c.plain("create"))) for name, c in commands.items()}


def quick_scripts(ssh_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Scripts:
    """The same with waits of a few seconds, so that a test can see them run out."""
    monkeypatch.setattr(render, "SHUTDOWN_WAIT_SECONDS", 0)
    config = cluster_config(ssh_key, hostKeyDir=str(tmp_path / "host-keys"), workerCount="3")
    patience = dataclasses.replace(
        tolerances.HARDWARE, api_steady_timeout_seconds=2, cni_await_seconds=3, drain_timeout_seconds=0
    )
    config = dataclasses.replace(config, tolerances=patience)
    keys = hostkeys.ensure_host_keys(config)
    return {
        w.name: (render.take_out_of_service_script(config, w, keys), render.return_to_service_script(config, w, keys))
        for w in config.workers
    }


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    (state / "nodes").mkdir(parents=True)
    for worker in ("work11", "work12", "work13"):
        (state / "nodes" / worker).write_text("True")
    for name, text in {"ssh": SSH, "sudo": SUDO, "kubectl": KUBECTL}.items():
        stand_in(tmp_path / "bin", name, text)
    return state


def start(state: Path, script: str) -> subprocess.Popen[str]:
    bin_dir = state.parent / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE": str(state)}
    # A session of its own: killing its process group ends the control plane's part too.
    return subprocess.Popen(
        ["/bin/bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def run(state: Path, script: str) -> subprocess.CompletedProcess[str]:
    process = start(state, script)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        stop(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def calls(state: Path) -> list[str]:
    path = state / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_a_drain_cordons_then_drains(state: Path, air: Evaluation) -> None:
    drain, _ = program_scripts(air)["work12"]
    done = run(state, drain)
    assert done.returncode == 0, done.stderr
    assert calls(state)[0] == "cordon work12"
    assert calls(state)[1].startswith("drain work12 --ignore-daemonsets --delete-emptydir-data --force --timeout=")


def test_a_node_is_taken_for_gone_on_not_found_only(
    state: Path, ssh_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen on the emulated e2e cluster: a drain loaded the control plane and a `get node` failed.
    quick = quick_scripts(ssh_key, tmp_path, monkeypatch)
    (state / "unanswered-work11").touch()
    done = run(state, quick["work11"][0])
    assert done.returncode == 0 and "did not say within 2 s whether work11 is a Node" in done.stderr
    (state / "unanswered-work11").unlink()
    (state / "nodes" / "work11").unlink()
    done = run(state, quick["work11"][0])
    assert done.returncode == 0 and "no Node work11: nothing to drain" in done.stdout
    assert calls(state) == []


def test_a_dead_cluster_never_blocks_the_vm_going(
    state: Path, air: Evaluation, ssh_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = quick_scripts(ssh_key, tmp_path, monkeypatch)
    (state / "api-down").touch()
    done = run(state, quick["work11"][0])
    assert done.returncode == 0 and "stops undrained" in done.stderr
    (state / "unreachable").touch()
    done = run(state, quick["work11"][0])
    assert done.returncode == 0 and "unreachable: skipped for work11" in done.stderr
    assert calls(state) == []


def test_return_to_service_uncordons_and_waits_for_ready(
    state: Path, air: Evaluation, ssh_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    back = run(state, program_scripts(air)["work11"][1])
    assert back.returncode == 0 and "work11 is Ready and schedulable" in back.stdout
    assert calls(state) == ["uncordon work11"]
    (state / "nodes" / "work11").write_text("False")
    back = run(state, quick_scripts(ssh_key, tmp_path, monkeypatch)["work11"][1])
    assert back.returncode == 1 and "not Ready within 3 s" in back.stderr, "the next worker must not go"
    (state / "unreachable").touch()
    back = run(state, program_scripts(air)["work11"][1])
    assert back.returncode == 255 and "unreachable: nothing done for work11" in back.stderr


# Answers `domstate` from a list of states, one per call, the last one for ever; records `shutdown`.
VIRSH = r"""#!/bin/bash
case "$*" in
  *" domstate "*)
    n=$(cat "$STATE/asked" 2>/dev/null || echo 0); echo $((n + 1)) > "$STATE/asked"
    mapfile -t states < "$STATE/states"
    i=$(( n < ${#states[@]} ? n : ${#states[@]} - 1 )); echo "${states[$i]}" ;;
  *" shutdown "*) echo "$*" >> "$STATE/calls" ;;
esac
"""


def test_the_guest_is_shut_down_cleanly_before_the_provider_deletes_its_domain(air: Evaluation, state: Path) -> None:
    stand_in(state.parent / "bin", "virsh", VIRSH)
    (state / "states").write_text("running\nin shutdown\nin shutdown\nshut off\n")
    done = run(state, str(air.named("work12-shutdown").plain("delete")))
    assert done.returncode == 0, done.stderr
    assert calls(state) == ['-q -c qemu:///system shutdown "work12"'.replace('"', "")]
    assert "work12 shut down cleanly in 4 s" in done.stdout, "it waits while the guest is in shutdown"
    (state / "calls").unlink()
    (state / "asked").unlink()
    (state / "states").write_text("shut off\n")
    done = run(state, str(air.named("work12-shutdown").plain("delete")))
    assert done.returncode == 0 and "not running: nothing to shut down" in done.stdout and calls(state) == []


def test_running_workers_go_one_at_a_time_and_new_ones_at_once(ssh_key: Path) -> None:
    config = cluster_config(ssh_key, workerCount="4")
    everyone = frozenset(n.name for n in config.nodes)
    assert one_at_a_time(config, everyone) == {"work12": "work11", "work13": "work12", "work14": "work13"}
    # A scale-up: the new worker is made at once; work13 was removed and comes back the same way.
    assert one_at_a_time(config, frozenset({"head10", "work11", "work12", "work14"})) == {
        "work12": "work11",
        "work14": "work12",
    }
    assert one_at_a_time(config, frozenset()) == {}, "the first up makes every node at once"


def test_the_program_makes_every_node_at_once_when_none_runs(air: Evaluation) -> None:
    # The dry run reads no host facts: nothing runs, so no domain waits for another worker.
    for worker in ("work11", "work12", "work13"):
        domain = air.named(f"{worker}-vm")
        assert not [u for u in domain.dependencies if "in-service" in u], domain.dependencies
