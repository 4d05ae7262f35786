"""kubeadm-init.sh, run for real against stand-ins: a run cut short converges, a finished one is kept.

kubeadm init writes admin.conf in its kubeconfig phase, before etcd and the control plane exist
(cmd/kubeadm/app/cmd/init.go phase order: preflight, certs, kubeconfig, etcd, control-plane,
kubelet-start, wait-control-plane, upload-config, ..., bootstrap-token, addon), so admin.conf does
not say init finished. The stand-in kubeadm writes what each phase leaves and can die after any of
them; a stand-in sudo moves /etc/kubernetes, /var/lib/etcd and /var/lib/kube-on-air under $ROOT; a
stand-in kubectl answers as an API server that is up or down.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from components.artifacts import render
from components.config import tolerances
from components.config.settings import ClusterConfig
from tests.conftest import cluster_config
from tests.standins import StandInNode

FAKE_SUDO = r"""#!/bin/bash
args=()
for arg in "$@"; do
  for dir in /etc/kubernetes /var/lib/etcd /var/lib/kube-on-air; do arg=${arg//$dir/$ROOT$dir}; done
  args+=("$arg")
done
exec "${args[@]}"
"""

FAKE_KUBEADM = r"""#!/bin/bash
set -euo pipefail
k=$ROOT/etc/kubernetes
echo "$1" >> "$ROOT/kubeadm-calls"
case "$1" in
  reset) rm -rf "$k" "$ROOT/var/lib/etcd" "$ROOT/api-up" "$ROOT/cluster-info"; mkdir -p "$k" ;;
  init)
    for leftover in "$k/admin.conf" "$k/manifests/kube-apiserver.yaml" "$ROOT/var/lib/etcd/member"; do
      [ ! -e "$leftover" ] || { echo "[ERROR] $leftover already exists" >&2; exit 1; }
    done
    # The API watch must be asking before the API server comes up.
    [ ! -e "$WATCH_LOG" ] || touch "$ROOT/watched-before-init"
    touch "$k/admin.conf"
    [ "${DIE_AFTER:-}" != kubeconfig ] || exit 137
    mkdir -p "$k/manifests" "$ROOT/var/lib/etcd/member"
    touch "$k/manifests/kube-apiserver.yaml" "$ROOT/api-up"
    [ "${DIE_AFTER:-}" != control-plane ] || exit 137
    touch "$ROOT/cluster-info" "$ROOT/coredns" ;;
  *) exit 2 ;;
esac
"""

FAKE_KUBECTL = r"""#!/bin/bash
[ -e "$ROOT/api-up" ] || exit 1
case "$*" in
  *"get --raw /readyz"*) exit 0 ;;
  *"get configmap cluster-info"*) [ -e "$ROOT/cluster-info" ] ;;
  *"get deployment coredns"*) [ -e "$ROOT/coredns" ] ;;
  *) exit 2 ;;
esac
"""


def quick(config: ClusterConfig) -> ClusterConfig:
    """The slow-host set (patches included), with a short wait for an API server that never answers."""
    patient = dataclasses.replace(tolerances.EMULATED, api_steady_timeout_seconds=3)
    return dataclasses.replace(config, tolerances=patient)


class ControlPlaneNode(StandInNode):
    def init(self, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(WATCH_LOG=str(self.root / "run/api-watch.log"), **env)


@pytest.fixture
def node(tmp_path: Path, ssh_key: Path, monkeypatch: pytest.MonkeyPatch) -> ControlPlaneNode:
    monkeypatch.setattr(render, "WATCH_DIRECTORY", str(tmp_path / "root/run"))
    script = render.kubeadm_init_script(quick(cluster_config(ssh_key, domainType="qemu")))
    tools = {"sudo": FAKE_SUDO, "kubeadm": FAKE_KUBEADM, "kubectl": FAKE_KUBECTL}
    return ControlPlaneNode.make(tmp_path, tools, script, "kind: InitConfiguration\n")


def test_a_fresh_node_is_initialised_once_with_its_patches(node: ControlPlaneNode) -> None:
    first = node.init()
    assert first.returncode == 0, first.stderr
    assert node.has("/var/lib/kube-on-air/kubeadm-init.done")
    assert node.has("/var/lib/kube-on-air/patches/kube-apiserver+strategic.yaml")
    assert node.has("/watched-before-init"), "the gate after init reads a watch started before it"
    again = node.init()
    assert again.returncode == 0 and "already initialised" in again.stdout
    assert node.kubeadm_calls() == ["init"]


@pytest.mark.parametrize("phase", ["kubeconfig", "control-plane"])
def test_an_init_cut_short_is_reset_and_run_again(node: ControlPlaneNode, phase: str) -> None:
    cut = node.init(DIE_AFTER=phase)
    assert cut.returncode != 0
    assert node.has("/etc/kubernetes/admin.conf") and not node.has("/var/lib/kube-on-air/kubeadm-init.done")
    again = node.init()
    assert again.returncode == 0, again.stderr
    assert "did not finish" in again.stderr
    assert node.kubeadm_calls() == ["init", "reset", "init"]
    assert node.has("/var/lib/kube-on-air/kubeadm-init.done")


def test_a_cluster_initialised_before_the_mark_is_kept(node: ControlPlaneNode) -> None:
    assert node.init().returncode == 0
    (node.root / "var/lib/kube-on-air/kubeadm-init.done").unlink()  # as a kube-on-air without the mark left it
    kept = node.init()
    assert kept.returncode == 0 and "already initialised" in kept.stdout
    assert node.kubeadm_calls() == ["init"]
    assert node.has("/var/lib/kube-on-air/kubeadm-init.done")


def test_a_control_plane_that_does_not_answer_is_never_reset(node: ControlPlaneNode) -> None:
    assert node.init().returncode == 0
    (node.root / "var/lib/kube-on-air/kubeadm-init.done").unlink()
    (node.root / "api-up").unlink()  # the API server is down (a slow host restarting it)
    refused = node.init()
    assert refused.returncode == 1
    assert "does not answer after 3 s" in refused.stderr and "kubeadm reset --force" in refused.stderr
    assert node.kubeadm_calls() == ["init"], "no reset, no second init"
    assert node.has("/etc/kubernetes/admin.conf")
