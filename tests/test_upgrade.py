"""Kubernetes upgrades under Pulumi's mock runtime: the release on every node first, then kubeadm's order.

Which versions are accepted is tests/test_preflight.py; the UpgradeConfiguration is read by the built
kubeadm in tests/toolchain/test_real_tools.py; the scripts run on the e2e cluster (make e2e-lifecycle).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components import cluster
from tests.conftest import air_config, cluster_config
from tests.test_program import planned_replacements, transitive
from tools.dryrun import Evaluation, evaluate

NODES = ("head10", "work11", "work12", "work13")
WORKERS = NODES[1:]


@pytest.fixture(scope="module")
def baked(ssh_key: Path) -> Evaluation:
    """The air stack from a node image (prebaked), as an offline host builds it."""
    return evaluate("air", air_config(ssh_key, prebaked="true"))


@pytest.fixture(scope="module")
def upgraded(ssh_key: Path) -> Evaluation:
    return evaluate("air", air_config(ssh_key, prebaked="true", kubernetesVersion="1.34.4"))


def test_every_node_holds_the_release_before_it_initialises_or_joins(baked: Evaluation) -> None:
    assert "head10-release-staged" in transitive(baked, "kube-on-air-control-plane-init")
    for worker in WORKERS:
        assert f"{worker}-release-staged" in transitive(baked, f"{worker}-kubeadm-join")
    for node in NODES:
        staged = baked.named(f"{node}-release-staged")
        assert baked.named(f"{node}-ready").urn in staged.dependencies
        # A new disk is a new machine that holds only what its image carries.
        assert staged.property_dependencies["triggers"] == [baked.named(f"{node}-disk").urn]
        assert "v1.34.2" in staged.plain("create")


def test_the_control_plane_upgrades_once_every_node_holds_the_release(baked: Evaluation) -> None:
    upgrade = transitive(baked, "kube-on-air-upgrade-head10")
    assert {f"{n}-release-staged" for n in NODES} <= upgrade
    assert "kube-on-air-api-steady" in upgrade


def test_each_worker_upgrades_after_the_control_plane_and_its_own_join(baked: Evaluation) -> None:
    for worker in WORKERS:
        before = transitive(baked, f"kube-on-air-upgrade-{worker}")
        assert {"kube-on-air-upgrade-head10", f"{worker}-kubeadm-join", f"{worker}-kubeadm-in-service"} <= before
        # At a first `up` every worker joins at the configured release: no turns to wait for.
        assert not any(f"kube-on-air-upgrade-{w}" in before for w in WORKERS if w != worker)


def test_the_api_gate_runs_again_after_the_last_node_is_upgraded(baked: Evaluation, upgraded: Evaluation) -> None:
    # The next `up`'s Kubernetes provider loads the OpenAPI document first, from an API server that
    # restarted and serves the pods the drains moved.
    settled = baked.named("kube-on-air-upgrade-settled")
    assert {baked.named(f"kube-on-air-upgrade-{n}").urn for n in NODES} <= set(settled.dependencies)
    assert "steady after the upgrade to v1.34.2" in settled.plain("update")
    assert "steady after the upgrade to v1.34.4" in upgraded.named("kube-on-air-upgrade-settled").plain("update")
    # Made with the cluster it waits for nothing: the first up's API server is busy enough.
    assert "no upgrade to settle" in settled.plain("create")
    assert "api-watch" not in settled.plain("create") and "api-watch" in settled.plain("update")


def test_running_workers_take_their_upgrade_turns_in_order(ssh_key: Path) -> None:
    config = cluster_config(ssh_key, workerCount="3")
    names = [w.name for w in config.workers]
    # The same turns as a resize's (components/cluster.py): only running workers wait.
    assert cluster.one_at_a_time(config, frozenset(names)) == {names[1]: names[0], names[2]: names[1]}
    assert cluster.one_at_a_time(config, frozenset(names[:1])) == {}


def test_a_new_version_updates_the_release_and_upgrade_steps_and_replaces_nothing(
    baked: Evaluation, upgraded: Evaluation
) -> None:
    assert planned_replacements(baked, upgraded) == set()
    old = {r.name: r for r in baked.resources}
    changed = {r.name for r in upgraded.resources if r.inputs != old[r.name].inputs}
    assert changed == {
        *(f"{n}-release-staged" for n in NODES),
        *(f"kube-on-air-upgrade-{n}" for n in NODES),
        "kube-on-air-upgrade-settled",
        # kubeadm init keeps its config file for reference; it does not run again (kubeadm-init.sh).
        "kube-on-air-control-plane-init",
    }
    for name in changed:  # an update of the step, never a replacement
        assert upgraded.named(name).inputs.get("triggers") == old[name].inputs.get("triggers")
    assert 'kubernetesVersion: "v1.34.4"' in upgraded.named("kube-on-air-upgrade-head10").plain("stdin")


def test_the_scripts_carry_the_version_and_the_release_directory(upgraded: Evaluation) -> None:
    staged = upgraded.named("work11-release-staged").plain("create")
    assert "/toolchain/releases/v1.34.4" in staged and "/var/lib/kube-on-air/releases/v1.34.4" in staged
    # Workers get no control-plane images; the control plane gets them all.
    assert "*/kube-apiserver:*" in staged
    assert "*/kube-apiserver:*" not in upgraded.named("head10-release-staged").plain("create")
    worker = upgraded.named("kube-on-air-upgrade-work11").plain("create")
    assert "drain work11 " in worker and "kubeadm upgrade node" in worker and 'version="v1.34.4"' in worker
