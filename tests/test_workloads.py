"""Where the workloads' pods land, and which of them `pulumi up` waits for.

Placement is checked with tests/scheduling.py over every order the Deployment controller and the
scheduler may choose, on the nodes the program builds (the control plane carries kubeadm's taint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import scheduling
from tests.conftest import air_config
from tests.scheduling import NOT_READY_TAINT, Node, Rules, State
from tools.dryrun import Evaluation, evaluate
from tools.render import manifest

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
PER_NODE = ("dnstools", "echo", "probe")
SKIP_AWAIT = "pulumi.com/skipAwait"


def deployments(evaluation: Evaluation) -> dict[str, dict[str, Any]]:
    """Deployment name -> the object the API server receives."""
    return {d.plain("metadata")["name"]: manifest(d) for d in evaluation.of_type(DEPLOYMENT)}


def cluster_nodes(evaluation: Evaluation) -> list[Node]:
    """The nodes as kubeadm registers them: the control plane keeps kubeadm's taint unless init lifts it."""
    init = evaluation.named("kube-on-air-control-plane-init").plain("stdin")
    registration = next(yaml.safe_load_all(init))["nodeRegistration"]
    key, effect = scheduling.CONTROL_PLANE_TAINT
    taints = registration.get("taints", [{"key": key, "effect": effect}])
    nodes = []
    for node in evaluation.outputs["nodes"]["value"]:
        own = tuple((t["key"], t["effect"]) for t in taints) if node["role"] == "control-plane" else ()
        nodes.append(Node(node["name"], own))
    return nodes


def schedulable(nodes: list[Node], spec: dict[str, Any] | None = None) -> list[str]:
    """Nodes the Deployment's pods may use: without tolerations the workers, or an untainted control
    plane alone; the probe tolerates the control plane's taint and uses every node."""
    tolerations = scheduling.rules_of(spec["template"]).tolerations if spec else ()
    return [n.name for n in nodes if not n.repels(tolerations)]


def one_each(names: list[str], revision: str) -> State:
    return tuple(sorted((revision, name) for name in names))


def rollout_ends(spec: dict[str, Any], nodes: list[Node], start: State) -> set[State]:
    rules = scheduling.rules_of(spec["template"])
    return scheduling.explore(rules, nodes, int(spec["replicas"]), scheduling.strategy_of(spec), start)


def describe(ends: set[State]) -> str:
    return "; ".join(str(sorted(end)) for end in sorted(ends)[:3])


@pytest.mark.parametrize("name", PER_NODE)
def test_first_placement_is_one_pod_per_worker(air: Evaluation, name: str) -> None:
    nodes = cluster_nodes(air)
    spec = deployments(air)[name]["spec"]
    ends = rollout_ends(spec, nodes, ())
    expected = {worker: 1 for worker in schedulable(nodes, spec)}
    assert ends and all(scheduling.per_node(end) == expected for end in ends), describe(ends)


@pytest.mark.parametrize("workers", ["1", "3"])
def test_a_probe_always_reaches_echo_from_another_node(ssh_key: Path, workers: str) -> None:
    """The seed's point: the check crosses nodes. echo stays on the workers; one probe runs on the
    control plane, so its requests to the Service can only reach echo on another node."""
    evaluation = evaluate("air", air_config(ssh_key, workerCount=workers))
    nodes = cluster_nodes(evaluation)
    specs = deployments(evaluation)
    echo_ends = rollout_ends(specs["echo"]["spec"], nodes, ())
    probe_ends = rollout_ends(specs["probe"]["spec"], nodes, ())
    assert echo_ends and probe_ends
    for echo in echo_ends:
        for probe in probe_ends:
            away = set(scheduling.per_node(probe)) - set(scheduling.per_node(echo))
            assert away == {"head10"}, (sorted(echo), sorted(probe))


@pytest.mark.parametrize("name", PER_NODE)
def test_a_rolling_update_finishes_one_pod_per_worker_in_every_order(air: Evaluation, name: str) -> None:
    """The seed's spread rule left the surge pod of every rollout Pending (see the model test below)."""
    nodes = cluster_nodes(air)
    spec = deployments(air)[name]["spec"]
    ends = rollout_ends(spec, nodes, one_each(schedulable(nodes, spec), "old"))
    stuck = {end for end in ends if not scheduling.finished(end, int(spec["replicas"]))}
    assert not stuck, f"the rollout can stop half-way: {describe(stuck)}"
    expected = {worker: 1 for worker in schedulable(nodes, spec)}
    assert all(scheduling.per_node(end) == expected for end in ends), describe(ends)


@pytest.mark.parametrize("name", PER_NODE)
def test_scaling_up_waits_for_new_workers_instead_of_doubling_up(air: Evaluation, five: Evaluation, name: str) -> None:
    """Right after `kubeadm join` the new workers are NotReady (tainted) when the replicas go up."""
    spec = deployments(five)[name]["spec"]
    assert spec["template"] == deployments(air)[name]["spec"]["template"], "scaling must not start a rollout"
    ready = cluster_nodes(five)
    new_workers = {"work14", "work15"}
    joining = [Node(n.name, (NOT_READY_TAINT,)) if n.name in new_workers else n for n in ready]
    start = one_each([n for n in schedulable(cluster_nodes(air), spec)], "new")
    waiting = rollout_ends(spec, joining, start)
    for end in waiting:
        assert max(scheduling.per_node(end).values()) == 1, f"two pods on one worker: {sorted(end)}"
    for end in waiting:
        after = rollout_ends(spec, ready, end)
        expected = {w: 1 for w in schedulable(ready, spec)}
        assert all(scheduling.per_node(e) == expected for e in after), describe(after)


def test_without_workers_the_control_plane_takes_the_replica(ssh_key: Path) -> None:
    solo = evaluate("air", air_config(ssh_key, workerCount="0"))
    nodes = cluster_nodes(solo)
    assert nodes == [Node("head10")], "kubeadm init lifts the taint on a single node"
    for name in PER_NODE:
        ends = rollout_ends(deployments(solo)[name]["spec"], nodes, one_each(["head10"], "old"))
        assert all(scheduling.per_node(end) == {"head10": 1} for end in ends), describe(ends)


def seed_rule(**extra: str) -> Rules:
    """The seed's rule: DoNotSchedule, maxSkew 1 over hostnames, default nodeTaintsPolicy (Ignore)."""
    spread = {"maxSkew": 1, "topologyKey": scheduling.HOSTNAME, "whenUnsatisfiable": "DoNotSchedule"}
    spread |= {"labelSelector": {"matchLabels": {"app": "echo"}}, **extra}
    template = {
        "metadata": {"labels": {"app": "echo"}},
        "spec": {"containers": [], "topologySpreadConstraints": [spread]},
    }
    return scheduling.rules_of(template)


def test_the_model_reproduces_the_seed_rules_stuck_rollout(air: Evaluation) -> None:
    """Verified against filtering.go: the tainted head10 counts as a domain with 0 pods, so the global
    minimum stays 0 and a surge pod on any worker makes skew 2; maxUnavailable 0 deletes nothing first."""
    nodes = cluster_nodes(air)
    strategy = scheduling.strategy_of({"replicas": 3})
    assert strategy == scheduling.Strategy(max_surge=1, max_unavailable=0)
    ends = scheduling.explore(seed_rule(), nodes, 3, strategy, one_each(schedulable(nodes), "old"))
    assert ends and not any(scheduling.finished(end, 3) for end in ends)


def test_honouring_taints_alone_would_double_up_during_a_scale_up(five: Evaluation) -> None:
    """Why the fix is not nodeTaintsPolicy: Honor: NotReady workers leave the domains, the minimum becomes 1."""
    joining = [Node(n.name, (NOT_READY_TAINT,)) if n.name in {"work14", "work15"} else n for n in cluster_nodes(five)]
    start = one_each(["work11", "work12", "work13"], "new")
    ends = scheduling.explore(
        seed_rule(nodeTaintsPolicy="Honor"), joining, 5, scheduling.strategy_of({"replicas": 5}), start
    )
    assert any(max(scheduling.per_node(end).values()) == 2 for end in ends)


def test_the_model_refuses_rules_it_does_not_know() -> None:
    template = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [], "nodeSelector": {"a": "b"}}}
    with pytest.raises(ValueError, match="nodeSelector"):
        scheduling.rules_of(template)
    with pytest.raises(ValueError, match="topologyKey"):
        seed_rule(topologyKey="topology.kubernetes.io/zone")


def test_kuard_is_the_seeds_pod_under_a_deployment(air: Evaluation) -> None:
    """A bare Pod is deleted by `kubectl drain --force` and nothing recreates it."""
    assert air.of_type("kubernetes:core/v1:Pod") == []
    kuard = deployments(air)["kuard"]
    assert kuard["spec"]["replicas"] == 1
    assert kuard["spec"]["selector"] == {"matchLabels": {"app": "kuard"}}
    pod = kuard["spec"]["template"]
    assert pod["metadata"]["labels"] == {"app": "kuard"}
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "gcr.io/kuar-demo/kuard-amd64:1"
    assert container["ports"] == [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthy", "port": 8080}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}
    assert container["resources"] == {
        "limits": {"cpu": "100m", "memory": "128Mi"},
        "requests": {"cpu": "50m", "memory": "64Mi"},
    }
    assert pod["spec"]["volumes"] == [
        {"hostPath": {"path": "/var/lib/kuard", "type": "DirectoryOrCreate"}, "name": "kuard-data"}
    ]
    ends = rollout_ends(kuard["spec"], cluster_nodes(air), one_each(["work11"], "old"))
    assert all(scheduling.finished(end, 1) for end in ends)


def test_only_the_connectivity_probe_is_awaited_with_the_configured_timeout(ssh_key: Path, air: Evaluation) -> None:
    kube_objects = [r for r in air.resources if r.type.startswith("kubernetes:") and r.custom]
    awaited = {
        r.name for r in kube_objects if (r.plain("metadata") or {}).get("annotations", {}).get(SKIP_AWAIT) != "true"
    }
    # The CNI and the namespace are infrastructure the workloads wait for; of the workloads only the probe gates.
    assert {n for n in awaited if n.startswith("kube-on-air-workloads-")} == {
        "kube-on-air-workloads-ns",
        "kube-on-air-workloads-probe",
    }
    for name in ("kuard", "dnstools", "echo", "echo-svc"):
        assert air.named(f"kube-on-air-workloads-{name}").plain("metadata")["annotations"] == {SKIP_AWAIT: "true"}
    assert air.named("kube-on-air-workloads-probe").custom_timeouts == {"create": "600s", "update": "600s"}
    quick = evaluate("air", air_config(ssh_key, connectivityTimeoutSeconds="90"))
    assert quick.named("kube-on-air-workloads-probe").custom_timeouts == {"create": "90s", "update": "90s"}


def test_the_workloads_start_once_every_add_on_is_ready(air: Evaluation) -> None:
    # Their pods and the add-ons' at once overloaded the emulated API server (a create cut at 34 s).
    add_ons = {"kube-on-air-metallb-webhook-ready", "kube-on-air-metrics-server-deployment"}
    add_ons |= {"kube-on-air-local-path-provisioner", "kube-on-air-metallb-speaker"}
    for workload in air.of_type("kubernetes:apps/v1:Deployment") + air.of_type("kubernetes:apps/v1:StatefulSet"):
        if not workload.name.startswith("kube-on-air-workloads-"):
            continue
        waits_for = {air.by_urn[u].name for u in air.transitive_dependencies(workload) if u in air.by_urn}
        assert add_ons <= waits_for, (workload.name, add_ons - waits_for)
