"""The metallb add-on: its pool (config), what `up` registers and in which order (mock runtime,
level 4), and its custom resources against the CRDs the cluster gets (level 3: upstream's schema).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from components import metallb
from components.artifacts import render
from components.config import settings as cfg
from tests.conftest import air_config
from tests.test_config import problems, raw_air
from tests.validators import custom_resource_schemas, validate_custom_resource
from tools import offline
from tools.dryrun import Evaluation, Resource, evaluate
from tools.render import heredocs

POOL = "kubernetes:metallb.io/v1beta1:IPAddressPool"
L2 = "kubernetes:metallb.io/v1beta1:L2Advertisement"
DAEMON_SET = "kubernetes:apps/v1:DaemonSet"


def named(evaluation: Evaluation, kind: str, name: str) -> Resource:
    (found,) = [r for r in evaluation.of_type(kind) if r.plain("metadata")["name"] == name]
    return found


# ---- the pool (loadBalancerAddresses) -------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "pool"),
    [
        ("172.31.255.0/24", "172.31.255.239-172.31.255.254"),
        ("10.20.0.0/16", "10.20.255.239-10.20.255.254"),
        ("192.168.7.0/26", "192.168.7.48-192.168.7.62"),  # a quarter of a small network
    ],
)
def test_auto_is_the_top_of_the_network_below_its_broadcast(ssh_key: Path, network: str, pool: str) -> None:
    config = cfg.load(raw_air(ssh_key, networkCidr=network), "air")
    assert config.load_balancer_range == pool


@pytest.mark.parametrize(
    ("value", "pool"),
    [
        ("172.31.255.100-172.31.255.120", "172.31.255.100-172.31.255.120"),
        (" 172.31.255.100 - 172.31.255.100 ", "172.31.255.100-172.31.255.100"),
        ("172.31.255.200/29", "172.31.255.200-172.31.255.207"),
    ],
)
def test_a_range_or_a_cidr_is_taken_as_given(ssh_key: Path, value: str, pool: str) -> None:
    config = cfg.load(raw_air(ssh_key, loadBalancerAddresses=value), "air")
    assert config.load_balancer_range == pool


@pytest.mark.parametrize(
    ("value", "fix_words"),
    [
        ("172.31.254.10-172.31.254.20", "inside networkCidr 172.31.255.0/24"),
        ("172.31.255.250-172.31.256.2", "a range such as"),
        ("172.31.255.20-172.31.255.10", "a range such as"),
        ("172.31.255.201/28", "a CIDR such as"),
        ("pool", "auto"),
        ("172.31.255.240/28", "network, gateway and broadcast"),
        ("172.31.255.1-172.31.255.5", "network, gateway and broadcast"),
        ("172.31.255.12-172.31.255.20", "work12, work13"),
    ],
)
def test_a_bad_pool_is_one_problem_naming_key_value_and_fix(ssh_key: Path, value: str, fix_words: str) -> None:
    found = problems(ssh_key, loadBalancerAddresses=value)
    assert [(p.key, p.value) for p in found] == [("loadBalancerAddresses", value)]
    assert fix_words in found[0].fix, found[0].fix


def test_workers_that_grow_into_the_default_pool_are_named(ssh_key: Path) -> None:
    found = problems(ssh_key, firstWorkerId="238")
    assert [p.key for p in found] == ["loadBalancerAddresses"]
    assert "work239, work240" in found[0].fix and "firstWorkerId" in found[0].fix


def test_the_pool_is_checked_only_when_metallb_is_on(ssh_key: Path) -> None:
    config = cfg.load(raw_air(ssh_key, firstWorkerId="238", addons='["local-path"]'), "air")
    assert [n.ip for n in config.workers][-1] == "172.31.255.240"


def test_node_problems_are_not_reported_twice_as_pool_problems(ssh_key: Path) -> None:
    found = problems(ssh_key, firstWorkerId="253")  # work255 and up leave the network
    assert "loadBalancerAddresses" not in {p.key for p in found}, found


# ---- what `up` registers ---------------------------------------------------------------------


def test_the_pool_is_the_configured_range_announced_in_l2(air: Evaluation) -> None:
    (pool,) = air.of_type(POOL)
    assert pool.plain("metadata") == {"name": metallb.POOL, "namespace": metallb.NAMESPACE}
    assert pool.plain("spec") == {"addresses": ["172.31.255.239-172.31.255.254"]}
    (advertisement,) = air.of_type(L2)
    assert advertisement.plain("spec") == {"ipAddressPools": [metallb.POOL]}


def test_the_pool_is_stored_before_the_webhook_that_judges_it_is_registered(air: Evaluation) -> None:
    (pool,) = air.of_type(POOL)
    (advertisement,) = air.of_type(L2)
    assert pool.urn in air.transitive_dependencies(advertisement)
    for stored in (pool, advertisement):
        waits_for = {air.by_urn[u].name for u in air.transitive_dependencies(stored) if u in air.by_urn}
        assert "kube-on-air-crds-metallb" in waits_for
        # A create through the webhook is cut at kube-apiserver's 34 s; these never go through it.
        assert not {"kube-on-air-metallb-webhooks", "kube-on-air-metallb-controller"} & waits_for, waits_for
    webhooks = air.named("kube-on-air-metallb-webhooks")
    assert {pool.urn, advertisement.urn} <= air.transitive_dependencies(webhooks)


def test_up_ends_once_the_webhook_admits_the_pool(air: Evaluation) -> None:
    gate = air.named("kube-on-air-metallb-webhook-ready")
    assert {air.by_urn[u].name for u in air.transitive_dependencies(gate) if u in air.by_urn} >= {
        "kube-on-air-metallb-controller",
        "kube-on-air-metallb-webhook-service",
        "kube-on-air-metallb-webhooks",
        "kube-on-air-metallb-l2",
    }
    # The gate asks the webhook about the very pool `up` stored.
    document = json.loads(heredocs(str(gate.plain("create")))["POOL"])
    assert document == pool_document(air)


def test_the_speaker_starts_after_the_controller_made_its_memberlist_secret(air: Evaluation) -> None:
    speaker = named(air, DAEMON_SET, "speaker")
    controller = [r for r in air.of_type("kubernetes:apps/v1:Deployment") if r.name == "kube-on-air-metallb-controller"]
    assert controller and controller[0].urn in air.transitive_dependencies(speaker)
    pod = speaker.plain("spec")["template"]["spec"]
    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secrets == [metallb.MEMBERLIST]
    assert pod["hostNetwork"] is True


def test_the_control_plane_answers_for_addresses_only_without_workers(air: Evaluation, ssh_key: Path) -> None:
    def speaker_args(evaluation: Evaluation) -> list[str]:
        container = named(evaluation, DAEMON_SET, "speaker").plain("spec")["template"]["spec"]["containers"][0]
        return list(container["args"])

    # Upstream's speakers skip nodes labelled exclude-from-external-load-balancers, as kubeadm labels
    # the control plane; a cluster with no worker would then have nobody answering ARP.
    assert "--ignore-exclude-lb" not in speaker_args(air)
    solo = evaluate("air", air_config(ssh_key, workerCount="0"))
    assert solo.error is None, solo.error
    assert "--ignore-exclude-lb" in speaker_args(solo)


def test_kuard_asks_for_the_first_address_of_the_pool(air: Evaluation) -> None:
    service = named(air, "kubernetes:core/v1:Service", "kuard")
    assert service.plain("spec")["type"] == "LoadBalancer"
    assert service.plain("metadata")["annotations"] == {
        "pulumi.com/skipAwait": "true",
        "metallb.io/loadBalancerIPs": "172.31.255.239",
    }
    assert air.outputs["kuardUrl"]["value"] == "http://172.31.255.239/"
    assert air.outputs["loadBalancerAddresses"]["value"] == "172.31.255.239-172.31.255.254"


def test_without_metallb_nothing_of_it_and_no_load_balancer_service(ssh_key: Path) -> None:
    bare = evaluate("air", air_config(ssh_key, addons='["local-path", "metrics-server"]'))
    assert bare.error is None, bare.error
    assert not [r for r in bare.resources if "metallb" in r.type]
    assert not [s for s in bare.of_type("kubernetes:core/v1:Service") if s.plain("spec").get("type") == "LoadBalancer"]
    assert "kuardUrl" not in bare.outputs and "loadBalancerAddresses" not in bare.outputs


def test_its_images_are_pinned_and_baked_into_the_offline_image() -> None:
    assert metallb.images() == ("quay.io/metallb/controller:v0.15.2", "quay.io/metallb/speaker:v0.15.2")
    assert set(metallb.images()) <= set(offline.stack_images("e2e"))


# ---- the custom resources against upstream's CRDs --------------------------------------------


def pool_document(air: Evaluation) -> dict[str, object]:
    (pool,) = air.of_type(POOL)
    fields = {k: pool.plain(k) for k in ("metadata", "spec")}
    return {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", **fields}


def test_the_crds_are_upstreams_eight_and_serve_our_kinds() -> None:
    crds = [d for d in yaml.safe_load_all(metallb.CRDS.read_text()) if d]
    assert len(crds) == 8 and {d["kind"] for d in crds} == {"CustomResourceDefinition"}
    assert {("metallb.io/v1beta1", "IPAddressPool"), ("metallb.io/v1beta1", "L2Advertisement")} <= set(
        custom_resource_schemas()
    )


def test_the_crd_schema_refuses_a_misspelt_or_mistyped_pool(air: Evaluation) -> None:
    schema = custom_resource_schemas()[("metallb.io/v1beta1", "IPAddressPool")]
    pool = pool_document(air)
    assert validate_custom_resource(pool, schema, "pool") == []
    spec = dict(pool["spec"])  # type: ignore[call-overload]
    typo = {**pool, "spec": {**spec, "autoAsign": False}}
    assert any("autoAsign" in p for p in validate_custom_resource(typo, schema, "pool"))
    wrong = {**pool, "spec": {"addresses": "172.31.255.239-172.31.255.254"}}
    assert any("spec.addresses" in p for p in validate_custom_resource(wrong, schema, "pool"))


# ---- the webhook gate, run for real against a stand-in kubectl ------------------------------


def run_gate(tmp_path: Path, refusals: int, timeout_seconds: int) -> subprocess.CompletedProcess[str]:
    """The rendered gate with `sudo` and a `kubectl` that refuses `refusals` times, then admits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/bin/bash\nexec "$@"\n')
    (bin_dir / "kubectl").write_text(
        "#!/bin/bash\n"
        f'calls={tmp_path}/calls; echo "$*" >>"$calls"\n'
        f'if [ "$(wc -l <"$calls")" -le {refusals} ]; then echo "connection refused" >&2; exit 1; fi\n'
        f"cat >{tmp_path}/admitted.json; echo ipaddresspool.metallb.io/default\n"
    )
    for tool in ("sudo", "kubectl"):
        (bin_dir / tool).chmod(0o755)
    script = tmp_path / "gate.sh"
    pool = metallb.pool_manifest("172.31.255.239-172.31.255.254")
    script.write_text(
        render.render(
            "scripts/metallb-webhook-ready.sh.j2",
            pool_name="default",
            pool_json=json.dumps(pool),
            admin_conf="/etc/kubernetes/admin.conf",
            timeout_seconds=timeout_seconds,
            retry_seconds=0,
        )
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_the_gate_retries_until_the_webhook_admits_the_pool(tmp_path: Path) -> None:
    done = run_gate(tmp_path, refusals=3, timeout_seconds=30)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 4
    assert calls[-1] == "--kubeconfig /etc/kubernetes/admin.conf apply --dry-run=server -o name -f -"
    admitted = json.loads((tmp_path / "admitted.json").read_text())
    assert admitted == metallb.pool_manifest("172.31.255.239-172.31.255.254")
    assert "admitted by MetalLB's webhook" in done.stdout


def test_the_gate_gives_up_with_the_last_answer(tmp_path: Path) -> None:
    done = run_gate(tmp_path, refusals=10**6, timeout_seconds=1)
    assert done.returncode == 1
    assert "did not admit the pool within 1 s: connection refused" in done.stderr


def test_probes_are_upstreams_on_kvm_and_patient_under_emulation(air: Evaluation, ssh_key: Path) -> None:
    def probes(evaluation: Evaluation) -> list[tuple[int, int, int]]:
        found = []
        for kind, name in (("kubernetes:apps/v1:Deployment", "controller"), (DAEMON_SET, "speaker")):
            container = named(evaluation, kind, name).plain("spec")["template"]["spec"]["containers"][0]
            for probe in (container["livenessProbe"], container["readinessProbe"]):
                found.append((probe["timeoutSeconds"], probe["periodSeconds"], probe["failureThreshold"]))
        return found

    assert probes(air) == [(1, 10, 3)] * 4, "upstream's manifest"
    emulated = evaluate("air", air_config(ssh_key, domainType="qemu"))
    assert emulated.error is None, emulated.error
    assert probes(emulated) == [(5, 10, 12), (5, 10, 3)] * 2


def test_the_api_server_waits_for_the_webhook_as_upstream_on_kvm_and_longer_under_emulation(
    air: Evaluation, ssh_key: Path
) -> None:
    def timeouts(evaluation: Evaluation) -> list[int]:
        kind = "kubernetes:admissionregistration.k8s.io/v1:ValidatingWebhookConfiguration"
        configuration = named(evaluation, kind, metallb.WEBHOOK_CONFIGURATION)
        return [webhook.get("timeoutSeconds") for webhook in configuration.plain("webhooks")]

    assert timeouts(air) == [10] * len(metallb.WEBHOOKS), "Kubernetes' default, as upstream's manifest leaves it"
    # Measured in make e2e: the L2Advertisement's call timed out at 10 s on a busy emulated host.
    emulated = evaluate("air", air_config(ssh_key, domainType="qemu"))
    assert timeouts(emulated) == [30] * len(metallb.WEBHOOKS), "the most the API allows"


def test_the_crds_go_first_and_the_api_settles_before_anything_else(air: Evaluation) -> None:
    settled = air.named("kube-on-air-crds-settled")
    crds = air.named("kube-on-air-crds-metallb")
    assert crds.urn in air.transitive_dependencies(settled)
    # Every other Kubernetes object starts after the gate: the provider's OpenAPI fetch after new
    # CRDs timed out under emulation while the CNI and the add-ons were being created beside them.
    kube_objects = [r for r in air.resources if r.custom and r.type.startswith("kubernetes:") and r.parent != crds.urn]
    objects = [r for r in kube_objects if r.type != "pulumi:providers:kubernetes"]
    assert objects
    early = [r.name for r in objects if settled.urn not in air.transitive_dependencies(r)]
    assert early == [], early
