"""The whole program under Pulumi's mock runtime: what it registers, in which order, with which secrets."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.artifacts import access, render
from tests.conftest import air_config
from tests.seeds import seed_of, seed_volumes
from tools.dryrun import (
    FAKE_PROVIDER_ACCESS,
    FAKE_SA_TOKEN,
    Evaluation,
    Resource,
    evaluate,
    is_secret,
    unwrap,
)

DOMAIN = "libvirt:index/domain:Domain"
VOLUME = "libvirt:index/volume:Volume"
REMOTE = "command:remote:Command"
LOCAL = "command:local:Command"
K8S_PROVIDER = "pulumi:providers:kubernetes"


def domains(evaluation: Evaluation) -> dict[str, Resource]:
    return {d.plain("name"): d for d in evaluation.of_type(DOMAIN)}


def test_air_stack_registers_the_seed_cluster(air: Evaluation) -> None:
    assert len(air.of_type("libvirt:index/network:Network")) == 1
    assert sorted(domains(air)) == ["head10", "work11", "work12", "work13"]
    overlays = [v for v in air.of_type(VOLUME) if v.plain("baseVolumeId")]
    assert len(overlays) == 4
    assert {v.plain("size") for v in overlays} == {20 * 1024**3}
    assert sorted(v.plain("name").split("-")[0] for v in seed_volumes(air)) == sorted(domains(air))
    assert [r.name for r in air.of_type(REMOTE) if r.name.endswith("-init")] == ["kube-on-air-control-plane-init"]
    assert sorted(r.name for r in air.of_type(LOCAL) if r.name.endswith("-join")) == [
        f"work1{i}-kubeadm-join" for i in (1, 2, 3)
    ]
    daemon_sets = {d.plain("metadata")["name"]: d for d in air.of_type("kubernetes:apps/v1:DaemonSet")}
    assert sorted(daemon_sets) == ["kube-router", "speaker"]
    daemon_set = daemon_sets["kube-router"]
    assert re.search(
        r"kube-router:v\d+\.\d+\.\d+$", daemon_set.plain("spec")["template"]["spec"]["containers"][0]["image"]
    )
    deployments = {d.plain("metadata")["name"]: d for d in air.of_type("kubernetes:apps/v1:Deployment")}
    assert sorted(deployments) == [
        "controller",
        "dnstools",
        "echo",
        "kuard",
        "local-path-provisioner",
        "metrics-server",
        "probe",
    ]
    assert deployments["dnstools"].plain("spec")["replicas"] == 3
    assert air.outputs["kubeconfig"]["secret"] is True


def test_domains_follow_the_provider_rules(air: Evaluation) -> None:
    network = air.of_type("libvirt:index/network:Network")[0]
    for domain in domains(air).values():
        assert domain.plain("machine") == "pc", "the cloud-init ISO is an IDE cdrom; q35 has no IDE"
        nic = domain.plain("networkInterfaces")[0]
        assert nic["waitForLease"] is False and domain.plain("qemuAgent") is False
        assert nic["mac"].startswith("52:54:00:")
        assert domain.plain("autostart") is True
        assert domain.plain("consoles")[0]["type"] == "pty"
        # Declared, so the provider adds no SPICE device (absent from EL9's QEMU); reachable from the host only.
        assert domain.plain("graphics") == {
            "type": "vnc",
            "listenType": "address",
            "listenAddress": "127.0.0.1",
            "autoport": True,
        }
        assert domain.plain("cpu") == {"mode": "host-passthrough"}
    hosts = {h["hostname"]: h["ip"] for h in network.plain("dns")["hosts"]}
    assert hosts == {f"{n}.air.internal": f"172.31.255.{n[-2:]}" for n in domains(air)}
    for resource in air.resources:
        if resource.type.startswith("libvirt:index/"):
            assert resource.plain("name"), (
                f"{resource.name} has no explicit name: the provider would add a random suffix"
            )


def test_components_follow_pulumi_conventions(air: Evaluation) -> None:
    components = [r for r in air.resources if r.type.startswith("kube-on-air:")]
    # The one component of someone else's: MetalLB's CRDs, applied from upstream's YAML by the provider.
    foreign = [r for r in air.resources if not r.custom and r not in components]
    assert [(r.type, air.by_urn[r.parent].type) for r in foreign] == [
        ("kubernetes:yaml/v2:ConfigGroup", "kube-on-air:crds:Crds")
    ]
    assert {c.type.split(":")[1] for c in components} == {
        "cluster",
        "network",
        "storage",
        "localpath",
        "metricsserver",
        "metallb",
        "crds",
        "servingcerts",
        "node",
        "kubeadm",
        "cni",
        "workloads",
        "timing",
        "upgrade",
    }
    for component in components:
        assert re.fullmatch(r"kube-on-air:[a-z]+:[A-Z][A-Za-z]+", component.type)
    names_by_urn = {r.urn: r.name for r in air.resources}
    for resource in air.resources:
        parent = air.by_urn.get(resource.parent)
        if parent is not None and parent.type != "kube-on-air:cluster:Cluster":
            assert resource.name.startswith(names_by_urn[parent.urn]), f"{resource.name} not named from {parent.name}"
    assert all(r.parent for r in air.resources), "everything lives under the cluster component"


def transitive(evaluation: Evaluation, name: str) -> set[str]:
    return {
        evaluation.by_urn[u].name
        for u in evaluation.transitive_dependencies(evaluation.named(name))
        if u in evaluation.by_urn
    }


def test_dependency_order(air: Evaluation) -> None:
    for worker in ("work11", "work12", "work13"):
        before_join = transitive(air, f"{worker}-kubeadm-join")
        assert {"kube-on-air-control-plane-init", f"{worker}-ready", f"{worker}-vm"} <= before_join
        assert not any(n.endswith("-kubeadm-join") for n in before_join), "joins run in parallel"
        assert f"{worker}-kubeadm-join" in transitive(air, f"{worker}-kubeadm-leave")
    assert "head10-ready" in transitive(air, "kube-on-air-control-plane-init")
    for workload in ("kube-on-air-workloads-probe", "kube-on-air-workloads-kuard", "kube-on-air-workloads-dnstools"):
        assert "kube-on-air-cni-ds" in transitive(air, workload)
    assert {f"work1{i}-kubeadm-join" for i in (1, 2, 3)} <= transitive(air, "kube-on-air-workloads-probe")


def test_kubernetes_resources_use_the_explicit_provider(air: Evaluation) -> None:
    (provider,) = air.of_type(K8S_PROVIDER)
    assert provider.is_secret("kubeconfig")
    assert provider.plain("kubeconfig") == access.provider_kubeconfig(FAKE_PROVIDER_ACCESS)
    assert air.outputs["kubeconfig"]["value"] == provider.plain("kubeconfig")
    kube_objects = [r for r in air.resources if r.type.startswith("kubernetes:")]
    assert len(kube_objects) >= 10
    for resource in kube_objects:
        assert resource.provider.startswith(provider.urn + "::"), resource.name
    for resource in air.resources:
        if resource.type.startswith("libvirt:index/"):
            assert "pulumi:providers:libvirt" in resource.provider


def all_command_lines(evaluation: Evaluation) -> list[str]:
    return [
        str(unwrap(r.inputs.get(phase)))
        for r in evaluation.of_type(REMOTE) + evaluation.of_type(LOCAL)
        for phase in ("create", "update", "delete")
        if r.inputs.get(phase)
    ]


def test_secrets_stay_secret(air: Evaluation, ssh_key: Path) -> None:
    private_key = ssh_key.read_text()
    for command in air.of_type(REMOTE):
        assert command.is_secret("connection"), f"{command.name}: the private key must be secret"
        assert command.plain("connection")["privateKey"] == private_key
    for name in ("kube-on-air-control-plane-kubeconfig", "work11-kubeadm-join", "work13-kubeadm-join"):
        command = air.named(name)
        assert command.plain("logging") == "none"
        assert {"stdout", "stderr"} <= set(command.additional_secret_outputs)
        assert command.plain("addPreviousOutputInEnv") is False
    for line in all_command_lines(air):
        assert "PRIVATE KEY" not in line and "client-key-data" not in line


BOOTSTRAP_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")


def test_join_credentials_are_minted_when_each_join_runs(air: Evaluation) -> None:
    # pulumi-command has no Read: credentials held in any resource's inputs or outputs would be
    # whatever was minted when that resource last ran, however long ago. Only the join itself mints.
    assert not [r.name for r in air.resources if "credentials" in r.name]
    for resource in air.resources:
        assert not BOOTSTRAP_TOKEN.search(json.dumps(unwrap(resource.inputs))), resource.name
    for worker in ("work11", "work12", "work13"):
        join = air.named(f"{worker}-kubeadm-join")
        assert join.type == LOCAL and join.plain("stdin") is None
        script = join.plain("create")
        assert f"kubeadm token create --ttl {render.JOIN_TOKEN_TTL}" in script
        assert render.TOKEN_PLACEHOLDER in script and render.CA_CERT_HASH_PLACEHOLDER in script
    for line in all_command_lines(air):
        assert "PRIVATE KEY" not in line and FAKE_SA_TOKEN not in line


def test_no_remote_command_sends_previous_output_as_environment(air: Evaluation) -> None:
    # pulumi-command's default (true) makes every update Setenv PULUMI_COMMAND_STDOUT/STDERR, which
    # sshd refuses unless AcceptEnv allows it: a warning per command per update.
    commands = {command.name: command.plain("addPreviousOutputInEnv") for command in air.of_type(REMOTE)}
    assert {"head10-ready", "work11-ready", "kube-on-air-control-plane-init"} <= set(commands)
    left_on = sorted(name for name, value in commands.items() if value is not False)
    assert not left_on, f"add_previous_output_in_env=False missing on {left_on}"


def test_no_secret_leaks_into_plain_inputs(air: Evaluation, ssh_key: Path) -> None:
    private_key = ssh_key.read_text().strip().splitlines()[1]

    def plain_parts(value: object) -> str:
        if is_secret(value):
            return ""
        if isinstance(value, dict):
            return " ".join(plain_parts(v) for v in value.values())
        if isinstance(value, list):
            return " ".join(plain_parts(v) for v in value)
        return str(value)

    for resource in air.resources:
        text = plain_parts(resource.inputs)
        assert private_key not in text and "client-key-data" not in text and FAKE_SA_TOKEN not in text, resource.name
        assert "PRIVATE KEY" not in text, f"{resource.name}: a private key (login or node host key) in a plain input"


def test_two_evaluations_are_identical(ssh_key: Path, air: Evaluation) -> None:
    again = evaluate("air", air_config(ssh_key))
    # Registration order may interleave differently; what each resource receives must not.
    first = sorted((r.type, r.name, r.inputs, r.dependencies) for r in air.resources)
    second = sorted((r.type, r.name, r.inputs, r.dependencies) for r in again.resources)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_scaling_adds_and_removes_workers_without_touching_the_rest(ssh_key: Path, air: Evaluation) -> None:
    five = evaluate("air", air_config(ssh_key, workerCount="5"))
    one = evaluate("air", air_config(ssh_key, workerCount="1"))
    assert sorted(domains(five)) == ["head10", "work11", "work12", "work13", "work14", "work15"]
    assert sorted(domains(one)) == ["head10", "work11"]
    assert "172.31.255.15/24" in seed_of(five, "work15")["network-config"]
    for name in ("head10", "work11"):
        # Unchanged inputs mean no replacement: scaling never rebuilds the nodes that stay.
        assert domains(five)[name].inputs == domains(air)[name].inputs == domains(one)[name].inputs
    dnstools = {e.stack + str(len(domains(e))): e for e in (air, five, one)}
    replicas = {
        key: next(d for d in e.of_type("kubernetes:apps/v1:Deployment") if d.name.endswith("dnstools")).plain("spec")[
            "replicas"
        ]
        for key, e in dnstools.items()
    }
    assert replicas == {"air4": 3, "air6": 5, "air2": 1}
    for name in ("work11-kubeadm-join", "kube-on-air-control-plane-init"):
        assert five.named(name).inputs == air.named(name).inputs == one.named(name).inputs


def test_a_rebuilt_worker_joins_again(ssh_key: Path, air: Evaluation) -> None:
    # The provider gives a replaced domain (lost disk, changed size...) a new id; pulumi-command
    # replaces a Command whose triggers change (replaceOnChanges), so the new VM runs the join again.
    rebuilt = evaluate("air", air_config(ssh_key), ids={"work12-vm": "work12-vm-rebuilt"})
    join = rebuilt.named("work12-kubeadm-join")
    assert "work12-vm-rebuilt" in join.plain("triggers")
    assert join.plain("triggers") != air.named("work12-kubeadm-join").plain("triggers")
    for other in ("work11", "work13"):
        assert rebuilt.named(f"{other}-kubeadm-join").inputs == air.named(f"{other}-kubeadm-join").inputs


# ForceNew arguments of terraform-provider-libvirt v0.8.1 (libvirt/resource_libvirt_{volume,domain}.go)
# by their Pulumi names; for the domain, the ones this program sets.
FORCE_NEW = {
    VOLUME: {"name", "pool", "source", "size", "format", "baseVolumeId"},
    DOMAIN: {"name", "description", "type", "vcpu", "memory", "cpu", "disks", "graphics"},
}


def planned_replacements(before: Evaluation, after: Evaluation) -> set[str]:
    """The libvirt resources `pulumi preview` from `before` to `after` shows as replaced.

    A replaced resource gets a new id, so an input that depends on it changes too (mock ids never do)."""
    old = {r.name: r for r in before.resources}
    replaced: set[str] = set()
    for resource in after.resources:  # registration order: a dependency comes before its dependents
        if resource.type not in FORCE_NEW or resource.name not in old:
            continue
        # The engine diffs an ignored input as if the state's value had been given again.
        keys = (set(resource.inputs) | set(old[resource.name].inputs)) - set(resource.ignore_changes)
        changed = {k for k in keys if unwrap(resource.inputs.get(k)) != unwrap(old[resource.name].inputs.get(k))}
        changed |= {
            key
            for key, urns in resource.property_dependencies.items()
            if any(after.by_urn[urn].name in replaced for urn in urns if urn in after.by_urn)
        }
        if changed & (FORCE_NEW[resource.type] | set(resource.replace_on_changes)):
            replaced.add(resource.name)
    return replaced


def test_a_changed_seed_rebuilds_its_nodes_and_nothing_else(ssh_key: Path, air: Evaluation) -> None:
    # A new seed under a running domain would never be read again: it comes with a new disk and VM.
    newer = evaluate("air", air_config(ssh_key, kubernetesVersion="1.34.3"))
    nodes = sorted(domains(air))
    assert planned_replacements(air, newer) == {f"{n}-{part}" for n in nodes for part in ("disk", "seed", "vm")}
    for name in nodes:
        assert instance_id(newer, name) != instance_id(air, name)
    # A bigger VM is a new domain on the same disk and seed: a reboot, not a new machine.
    bigger = evaluate("air", air_config(ssh_key, workerMemoryMiB="2048"))
    assert planned_replacements(air, bigger) == {"work11-vm", "work12-vm", "work13-vm"}
    assert {n: instance_id(bigger, n) for n in nodes} == {n: instance_id(air, n) for n in nodes}


def instance_id(evaluation: Evaluation, node: str) -> str:
    """The seed's instance-id, checked against the generation in its disk's name."""
    meta_data = yaml.safe_load(seed_of(evaluation, node)["meta-data"])
    generation = evaluation.named(f"{node}-disk").plain("name").removeprefix(f"{node}-").removesuffix(".qcow2")
    assert meta_data["instance-id"] == f"{evaluation.stack}-{node}-{generation}"
    return str(meta_data["instance-id"])


def host_names(evaluation: Evaluation) -> dict[str, set[str]]:
    networks = evaluation.of_type("libvirt:index/network:Network")
    pools = evaluation.of_type("libvirt:index/pool:Pool")
    return {
        "network": {n.plain("name") for n in networks},
        "bridge": {n.plain("bridge") for n in networks},
        "cidr": {n.plain("addresses")[0] for n in networks},
        "pool": {p.plain("name") for p in pools},
        "pool_path": {p.plain("target")["path"] for p in pools},
        "domain": set(domains(evaluation)),
        "mac": {d.plain("networkInterfaces")[0]["mac"] for d in evaluation.of_type(DOMAIN)},
    }


def test_two_stacks_on_one_host_never_collide(ssh_key: Path, air: Evaluation) -> None:
    lab = evaluate(
        "lab",
        {
            "kube-on-air:sshKeyPath": str(ssh_key),
            "kube-on-air:networkCidr": "172.31.254.0/24",
            "kube-on-air:workerCount": "3",
        },
    )
    assert lab.error is None, lab.error
    ours, theirs = host_names(air), host_names(lab)
    for kind in ours:
        assert not ours[kind] & theirs[kind], f"{kind} collides: {ours[kind] & theirs[kind]}"
    assert sorted(theirs["domain"]) == ["lab-head10", "lab-work11", "lab-work12", "lab-work13"]
    assert all(len(b) <= 15 for b in theirs["bridge"])


@pytest.fixture(scope="module")
def variants(ssh_key: Path) -> dict[str, Evaluation]:
    return {
        "calico": evaluate("air", air_config(ssh_key, cni="calico")),
        "prebaked": evaluate("air", air_config(ssh_key, prebaked="true", workloads="[]")),
        "solo": evaluate("air", air_config(ssh_key, workerCount="0", keepBaseImage="true", domainType="qemu")),
        "preview": evaluate("air", air_config(ssh_key), preview=True),
    }


def test_calico_replaces_kube_router(variants: dict[str, Evaluation]) -> None:
    calico = variants["calico"]
    assert [d.plain("metadata")["name"] for d in calico.of_type("kubernetes:apps/v1:DaemonSet")] == ["speaker"]
    (config_file,) = calico.of_type("kubernetes:yaml/v2:ConfigFile")
    assert re.search(r"/calico/v\d+\.\d+\.\d+/manifests/calico\.yaml$", config_file.plain("file"))
    assert "pulumi:providers:kubernetes" in config_file.provider


def test_prebaked_images_skip_package_installation(variants: dict[str, Evaluation], air: Evaluation) -> None:
    for node in domains(variants["prebaked"]):
        assert "koa-install-kubernetes" not in seed_of(variants["prebaked"], node)["user-data"]
    for node in domains(air):
        assert "kubeadm=${version}-*" in seed_of(air, node)["user-data"]
    assert variants["prebaked"].of_type("kube-on-air:workloads:Workloads") == []


def test_single_node_cluster_untaints_the_control_plane(variants: dict[str, Evaluation]) -> None:
    solo = variants["solo"]
    assert sorted(domains(solo)) == ["head10"]
    init = solo.named("kube-on-air-control-plane-init")
    documents = list(yaml.safe_load_all(init.plain("stdin")))
    assert documents[0]["nodeRegistration"]["taints"] == []
    assert solo.named("kube-on-air-images-base").retain_on_delete is True
    assert domains(solo)["head10"].plain("type") == "qemu"
    assert "cpu" not in domains(solo)["head10"].inputs


def test_preview_evaluates_without_running_anything(variants: dict[str, Evaluation], air: Evaluation) -> None:
    preview = variants["preview"]
    assert preview.error is None
    assert sorted(r.name for r in preview.resources) == sorted(r.name for r in air.resources)


def test_phase_timing_is_recorded_in_run_order(air: Evaluation) -> None:
    phases = air.outputs["phaseSeconds"]["value"]
    assert set(phases) == {
        "vms-up",
        "cloud-init-done",
        "kubeadm-init",
        "joins",
        "api-steady",
        "cni-ready",
        "addons-ready",
        "workloads-ready",
    }
    assert set(phases.values()) == {42.5}
    assert "kube-on-air-local-path-provisioner" in transitive(air, "kube-on-air-phases-addons-ready")
    assert "kube-on-air-cni-ds" in transitive(air, "kube-on-air-phases-cni-ready")
    assert "kube-on-air-workloads-probe" in transitive(air, "kube-on-air-phases-workloads-ready")
    assert "kube-on-air-phases-start" in transitive(air, "kube-on-air-phases-vms-up")
    for marker in air.of_type(LOCAL):
        if marker.name.startswith("kube-on-air-phases-"):
            assert marker.plain("create") == "date +%s.%N", "inputs carry no timestamps"


def _init_documents(evaluation: Evaluation) -> dict[str, dict[str, Any]]:
    stdin = evaluation.named("kube-on-air-control-plane-init").plain("stdin")
    return {doc["kind"]: doc for doc in yaml.safe_load_all(stdin)}


def _kube_router_liveness(evaluation: Evaluation) -> dict[str, Any]:
    pod = evaluation.named("kube-on-air-cni-ds").plain("spec")["template"]["spec"]
    return dict(next(c for c in pod["containers"] if c["name"] == "kube-router")["livenessProbe"])


def test_a_slow_host_gets_patient_timeouts_and_a_real_host_upstreams(ssh_key: Path, air: Evaluation) -> None:
    """slowHost auto follows domainType: under emulation etcd, kubeadm, the kubelet, the static pods,
    kube-router and the CNI await are patient; on KVM every value stays upstream's."""
    slow = evaluate("air", air_config(ssh_key, domainType="qemu"))
    forced_off = evaluate("air", air_config(ssh_key, domainType="qemu", slowHost="false"))
    docs = _init_documents(slow)
    assert docs["InitConfiguration"]["timeouts"]["controlPlaneComponentHealthCheck"] == "20m0s"
    assert docs["InitConfiguration"]["patches"] == {"directory": "/var/lib/kube-on-air/patches"}
    etcd_args = {a["name"]: a["value"] for a in docs["ClusterConfiguration"]["etcd"]["local"]["extraArgs"]}
    assert etcd_args == {"heartbeat-interval": "500", "election-timeout": "5000"}
    # Seen in make e2e: the API server's first call to metrics-server's Service left the node before
    # kube-proxy had the Service, was answered beyond the host, and the metrics API stayed 404.
    for evaluation in (slow, forced_off):
        api_server = _init_documents(evaluation)["ClusterConfiguration"]["apiServer"]["extraArgs"]
        assert {"name": "enable-aggregator-routing", "value": "true"} in api_server
    # One control plane, no other candidate: a lost lease would only restart them.
    for component in ("controllerManager", "scheduler"):
        election = {a["name"]: a["value"] for a in docs["ClusterConfiguration"][component]["extraArgs"]}
        assert election == {"leader-elect": "false"}, component
        assert component not in _init_documents(forced_off)["ClusterConfiguration"], "upstream's election on KVM"
    assert docs["KubeletConfiguration"]["runtimeRequestTimeout"] == "10m0s"
    init_script = slow.named("kube-on-air-control-plane-init").plain("create")
    assert "kube-apiserver+strategic.yaml" in init_script and "failureThreshold: 30" in init_script
    assert _kube_router_liveness(slow)["failureThreshold"] == 12
    # Measured: the probe's exec of agnhost connect took over 5 s on the busy emulated control plane.
    probe = slow.named("kube-on-air-workloads-probe").plain("spec")["template"]["spec"]["containers"][0]
    assert (
        probe["readinessProbe"]["timeoutSeconds"] == 45
        and "--timeout=20s" in probe["readinessProbe"]["exec"]["command"]
    )
    assert slow.named("kube-on-air-cni-ds").custom_timeouts == {"create": "1800s", "update": "1800s"}
    # Seen in make conformance: the up after the suite met an OpenAPI document slower than 32 s.
    assert json.loads(slow.named("kube-on-air-k8s").plain("kubeClientSettings")) == {"timeout": 300}
    for upstream in (air, forced_off):
        assert "kubeClientSettings" not in upstream.named("kube-on-air-k8s").inputs
        docs = _init_documents(upstream)
        assert "timeouts" not in docs["InitConfiguration"] and "patches" not in docs["InitConfiguration"]
        assert "etcd" not in docs["ClusterConfiguration"]
        assert "controllerManager" not in docs["ClusterConfiguration"]
        assert docs["KubeletConfiguration"]["runtimeRequestTimeout"] == "2m0s"
        assert "strategic.yaml" not in upstream.named("kube-on-air-control-plane-init").plain("create")
        assert _kube_router_liveness(upstream)["failureThreshold"] == 3
        assert upstream.named("kube-on-air-cni-ds").custom_timeouts == {"create": "600s", "update": "600s"}


def test_the_kubernetes_provider_waits_for_a_steady_api_server(air: Evaluation) -> None:
    provider = air.named("kube-on-air-k8s")
    gate = air.named("kube-on-air-api-steady")
    # The provider loads /openapi/v2 first, with a 32 s timeout: the gate has it built and fast.
    assert '"https://172.31.255.10:6443/openapi/v2", 20, OPENAPI_PROTOBUF' in gate.plain("create")
    assert "https://172.31.255.10:6443/readyz" in gate.plain("create")
    assert air.named("kube-on-air-control-plane-init").urn in gate.dependencies
    assert gate.urn in provider.dependencies


def test_the_kubernetes_layer_overlaps_the_joins(air: Evaluation) -> None:
    """After init the gate, the kubeconfig, the provider and the CNI need only the control plane; the
    workers join meanwhile. The connectivity gate waits for every join, so it still crosses nodes and
    its timeout counts pods, not joins."""
    joins = {r.name for r in air.resources if r.name.endswith("-kubeadm-join")}
    assert len(joins) == 3
    for name in ("kube-on-air-api-steady", "kube-on-air-k8s", "kube-on-air-cni-ds"):
        assert not joins & transitive(air, name), f"{name} waits for a join"
    probe = air.named("kube-on-air-workloads-probe")
    assert joins <= {air.by_urn[u].name for u in probe.dependencies}


STAND_IN_VIRSH = """#!/bin/sh
# Answers kept_store's three questions as libvirt does after a destroy with keepBaseImage.
case "$*" in
  *"pool-uuid koa-air"*) echo 0f6c4e1a-0000-4000-8000-000000000001 ;;
  *"domuuid head10"*)
    if [ -n "${KOA_TEST_CONTROL_PLANE_RUNS:-}" ]; then echo 7d1b0c3e-0000-4000-8000-000000000002; exit 0; fi
    echo "error: failed to get domain 'head10'" >&2; exit 1 ;;
  *"vol-key base.qcow2 --pool koa-air"*) echo /var/lib/libvirt/images/kube-on-air-air/base.qcow2 ;;
  *) exit 1 ;;
esac
"""


def test_a_kept_pool_and_base_image_are_taken_over_not_created_again(
    ssh_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """terraform-provider-libvirt v0.8.1 refuses to create a pool whose name exists ("storage pool
    'koa-air' already exists"), which is what keepBaseImage's destroy leaves: the next up imports it."""
    (tmp_path / "virsh").write_text(STAND_IN_VIRSH)
    (tmp_path / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    kept = evaluate("air", air_config(ssh_key, keepBaseImage="true"))
    assert kept.error is None, kept.error
    pool, base = kept.named("kube-on-air-images-pool"), kept.named("kube-on-air-images-base")
    assert pool.import_id == "0f6c4e1a-0000-4000-8000-000000000001"
    assert base.import_id == "/var/lib/libvirt/images/kube-on-air-air/base.qcow2"
    # A running cluster's store is in the state already; without keepBaseImage nothing was kept.
    monkeypatch.setenv("KOA_TEST_CONTROL_PLANE_RUNS", "1")
    running = evaluate("air", air_config(ssh_key, keepBaseImage="true"))
    fresh = evaluate("air", air_config(ssh_key, keepBaseImage="false"))
    for evaluation in (running, fresh):
        assert evaluation.named("kube-on-air-images-pool").import_id == ""
        assert evaluation.named("kube-on-air-images-base").import_id == ""
    # The up after the takeover: the state holds the base as the import read it, without `source`
    # (libvirt does not keep it). The real run replaced the base, then every disk and VM on it.
    taken_over = as_imported(kept, "kube-on-air-images-base")
    assert "source" not in taken_over.named("kube-on-air-images-base").inputs
    for evaluation in (running, fresh):
        assert planned_replacements(taken_over, evaluation) == set()


def as_imported(evaluation: Evaluation, name: str) -> Evaluation:
    """The state an import leaves: the resource as read back, its ignored inputs absent."""
    resources = [
        dataclasses.replace(r, inputs={k: v for k, v in r.inputs.items() if k not in r.ignore_changes})
        if r.name == name
        else r
        for r in evaluation.resources
    ]
    return Evaluation(evaluation.stack, resources, evaluation.outputs, evaluation.error, evaluation.seconds)


def test_domain_macs_are_given_as_the_provider_reads_them_back(air: Evaluation) -> None:
    """The real second `up` showed `~ networkInterfaces` on every domain: v0.8.1 reads MACs upper-case."""
    for domain in air.of_type("libvirt:index/domain:Domain"):
        mac = domain.plain("networkInterfaces")[0]["mac"]
        assert mac == mac.upper() and re.fullmatch(r"52:54:00(:[0-9A-F]{2}){3}", mac), mac


# What provider v0.8.1's resourceLibvirtDomainRead puts in a NIC's state: the network id and name, the
# MAC (upper-case), hostname and wait_for_lease as the state had them, and `addresses` from the DHCP
# leases of that MAC, which the nodes (static, dhcp4: false) never take.
NIC_READ_BACK = {"networkId", "mac", "waitForLease"}


def test_every_nic_input_is_what_the_provider_reads_back(air: Evaluation) -> None:
    """The real second `up` updated every domain once (networkInterfaces[0].addresses[0] add): the
    create's read found no lease, so the state kept no address while the inputs named one."""
    for domain in air.of_type("libvirt:index/domain:Domain"):
        (nic,) = domain.plain("networkInterfaces")
        assert set(nic) <= NIC_READ_BACK, f"{domain.name}: {sorted(set(nic) - NIC_READ_BACK)} are not read back"
        network = seed_of(air, domain.name.removesuffix("-vm"))["network-config"]
        assert "dhcp4: false" in network and nic["mac"].lower() in network, network


def test_every_volume_format_is_what_libvirt_reads_back(air: Evaluation) -> None:
    """libvirt's dir pool probes each volume's file and reports its format; provider v0.8.1 reads that
    back into `format`, a ForceNew input. The real second `up` replaced both seeds (declared "raw",
    read back "iso", as `virsh vol-dumpxml` shows after an upload) and every VM and step on them."""
    for volume in air.of_type(VOLUME):
        source = volume.plain("source")
        if volume.name.endswith("-seed"):
            assert Path(source).read_bytes()[32769:32774] == b"CD001", "an ISO 9660 file, as libvirt probes it"
            assert volume.plain("format") == "iso", volume.name
        else:
            assert volume.plain("format") == "qcow2", volume.name


def test_every_node_is_made_at_once_after_the_network_and_base_image(air: Evaluation) -> None:
    """The nodes' libvirt creates no longer line up: seeds are uploaded and never read back (the
    read-back was where a go-libvirt stream once deadlocked), and parallel uploads on the provider's
    one connection held in a real run of 5 rounds (docs/design.md). Within a node: seed, disk, VM."""
    shared = {air.named("kube-on-air-network-net").urn, air.named("kube-on-air-images-base").urn}
    nodes = ["head10", "work11", "work12", "work13"]
    for node in nodes:
        assert shared <= air.depends_on(air.named(f"{node}-seed")), node
        assert air.named(f"{node}-seed").urn in air.depends_on(air.named(f"{node}-disk")), node
        assert air.named(f"{node}-disk").urn in air.depends_on(air.named(f"{node}-vm")), node
        before = transitive(air, f"{node}-vm")
        assert not {f"{other}-vm" for other in nodes} & before, f"{node} waits for another node's VM"


def test_every_named_libvirt_object_is_deleted_before_its_replacement(air: Evaluation) -> None:
    """The real `up --replace` of work11's disk made the replacement first, on the same volume path,
    then deleted the original: the running worker's disk file was gone (QEMU held it open, deleted)."""
    named = [r for r in air.resources if r.type.startswith("libvirt:index/") and r.plain("name")]
    assert len(named) == 3 + 3 * 4, sorted(r.name for r in named)  # network, pool, base; seed, disk, VM per node
    for resource in named:
        assert resource.delete_before_replace, resource.name


def test_a_new_domain_on_the_same_disk_is_a_reboot_not_a_new_cluster(air: Evaluation) -> None:
    """Provider v0.8.1 makes a new domain for a new vCPU count or memory size. The engine deletes what
    depends on the domain's id before it: the worker's drain, then the clean shutdown it waits for. The
    Kubernetes provider is identified by the control plane's disk, so a kubeconfig unknown in a preview
    (fetched again after the control plane's reboot) does not replace it and every object with it."""
    provider = air.named("kube-on-air-k8s")
    assert provider.plain("clusterIdentifier") == air.named("head10-disk").plain("name")
    # kubeadm init (and the kubeconfig after it) once per disk; the API gate again after a reboot.
    init = air.named("kube-on-air-control-plane-init")
    assert init.property_dependencies["triggers"] == [air.named("head10-disk").urn]
    gate = air.named("kube-on-air-api-steady")
    assert air.named("head10-ready").urn in gate.property_dependencies["triggers"]
    assert air.named("head10-disk").urn in provider.property_dependencies["clusterIdentifier"]
    for node in ("head10", "work11", "work12", "work13"):
        shutdown = air.named(f"{node}-shutdown")
        assert air.named(f"{node}-vm").urn in shutdown.property_dependencies["triggers"]
        assert 'virsh -q -c "qemu:///system")' in shutdown.plain("delete")
        assert shutdown.plain("create") is None, "nothing to do until the domain goes"
    for worker in ("work11", "work12", "work13"):
        in_service = air.named(f"{worker}-kubeadm-in-service")
        assert air.named(f"{worker}-vm").urn in in_service.property_dependencies["triggers"]
        # Deleted (drained) before the shutdown, which the engine deletes before the domain.
        assert air.named(f"{worker}-shutdown").urn in in_service.dependencies
        assert air.named(f"{worker}-shutdown").urn in air.named(f"{worker}-kubeadm-leave").dependencies
        assert f"drain {worker} " in in_service.plain("delete") and f"uncordon {worker}" in in_service.plain("create")


def test_scaling_leaves_the_other_workers_maintenance_steps_as_they_are(air: Evaluation, five: Evaluation) -> None:
    # Any input change re-runs a command: a scale-up must not uncordon and wait on every worker again.
    for worker in ("work11", "work12", "work13"):
        for phase in ("create", "delete"):
            name = f"{worker}-kubeadm-in-service"
            assert air.named(name).plain(phase) == five.named(name).plain(phase), (name, phase)
