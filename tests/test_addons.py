"""The add-ons under the Kubernetes provider: local-path (the default StorageClass), metrics-server
(the metrics API), and the stateful example that claims its volumes.

Under Pulumi's mock runtime (level 4): which objects `up` registers, what they wait for, and the
images the nodes must carry; the provisioner's setup and teardown scripts run for real here.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from components import localpath, metricsserver
from components.artifacts import render
from tests.conftest import air_config, cluster_config
from tests.validators import require_valid, validate_shell_files
from tools import offline
from tools.dryrun import Evaluation, Resource, evaluate

STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
API_SERVICE = "kubernetes:apiregistration.k8s.io/v1:APIService"


@pytest.fixture(scope="module")
def stateful(ssh_key: Path) -> Evaluation:
    evaluation = evaluate("air", air_config(ssh_key, workloads='["connectivity-check", "stateful"]'))
    assert evaluation.error is None, evaluation.error
    return evaluation


def deployment(evaluation: Evaluation, name: str) -> Resource:
    (found,) = [d for d in evaluation.of_type("kubernetes:apps/v1:Deployment") if d.plain("metadata")["name"] == name]
    return found


def test_local_path_is_the_default_storage_class_by_default(air: Evaluation) -> None:
    (storage_class,) = air.of_type(STORAGE_CLASS)
    assert storage_class.plain("metadata")["name"] == "local-path"
    assert storage_class.plain("metadata")["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert storage_class.plain("provisioner") == "rancher.io/local-path"
    # A volume is made on the node its first pod lands on, not on one chosen before scheduling.
    assert storage_class.plain("volumeBindingMode") == "WaitForFirstConsumer"
    pod = deployment(air, "local-path-provisioner").plain("spec")["template"]["spec"]
    assert pod["containers"][0]["image"] == localpath.LOCAL_PATH_IMAGE
    assert pod["serviceAccountName"] == localpath.ACCOUNT
    # Nothing in `up` needs a volume: the provisioner is applied, not awaited.
    assert deployment(air, "local-path-provisioner").plain("metadata")["annotations"] == {
        "pulumi.com/skipAwait": "true"
    }


def test_the_provisioner_waits_for_the_pod_network(air: Evaluation) -> None:
    provisioner = deployment(air, "local-path-provisioner")
    waits_for = air.transitive_dependencies(provisioner)
    (kube_router,) = [
        d for d in air.of_type("kubernetes:apps/v1:DaemonSet") if d.plain("metadata")["name"] == "kube-router"
    ]
    assert kube_router.urn in waits_for
    joins = [r.urn for r in air.resources if r.name.endswith("-kubeadm-join")]
    assert joins and not waits_for.intersection(joins), "the workers' joins hold up only the probe"


def test_helper_pods_run_an_image_the_nodes_carry(air: Evaluation) -> None:
    (config_map,) = [
        c for c in air.of_type("kubernetes:core/v1:ConfigMap") if c.plain("metadata")["name"] == "local-path-config"
    ]
    data = config_map.plain("data")
    helper = yaml.safe_load(data["helperPod.yaml"])
    assert helper["kind"] == "Pod"
    assert helper["spec"]["containers"][0]["image"] == localpath.BUSYBOX_IMAGE
    paths = json.loads(data["config.json"])["nodePathMap"]
    assert paths == [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [localpath.VOLUME_ROOT]}]
    # The e2e stack's nodes are baked with every image it runs (make image).
    needed = offline.stack_images("e2e")
    assert {localpath.LOCAL_PATH_IMAGE, localpath.BUSYBOX_IMAGE} <= set(needed)


def test_no_addons_registers_no_storage_and_no_metrics_api(ssh_key: Path) -> None:
    bare = evaluate("air", air_config(ssh_key, addons="[]"))
    assert bare.error is None, bare.error
    assert not bare.of_type(STORAGE_CLASS) and not bare.of_type(API_SERVICE)
    assert not [r for r in bare.resources if r.type.startswith(("kube-on-air:localpath", "kube-on-air:metricsserver"))]
    # The kubelets' serving certificates are the cluster CA's with or without metrics-server.
    assert bare.of_type("kube-on-air:servingcerts:ServingCerts")


def test_metrics_server_checks_the_kubelets_against_the_cluster_ca(air: Evaluation, ssh_key: Path) -> None:
    server = deployment(air, "metrics-server")
    pod = server.plain("spec")["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == metricsserver.METRICS_SERVER_IMAGE
    assert not [a for a in container["args"] if "insecure" in a], "no --kubelet-insecure-tls"
    assert "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname" in container["args"]
    # Awaited: the metrics API is registered only once its server answers.
    assert "pulumi.com/skipAwait" not in (server.plain("metadata").get("annotations") or {})
    # What its certificate check stands on: every kubelet asks the cluster CA for a serving
    # certificate, and the approver that lets the CA sign it runs before metrics-server starts.
    kubelet = list(yaml.safe_load_all(render.kubeadm_config(cluster_config(ssh_key))))[-1]
    assert kubelet["kind"] == "KubeletConfiguration" and kubelet["serverTLSBootstrap"] is True
    (approver,) = [r for r in air.of_type("command:remote:Command") if r.name.endswith("-serving-certs-approver")]
    assert approver.urn in air.transitive_dependencies(server)


def test_the_metrics_api_is_registered_after_its_server_serves(air: Evaluation) -> None:
    (api_service,) = air.of_type(API_SERVICE)
    assert api_service.plain("metadata")["name"] == "v1beta1.metrics.k8s.io"
    spec = api_service.plain("spec")
    assert (
        spec["service"] == {"name": "metrics-server", "namespace": "kube-system"} and spec["group"] == "metrics.k8s.io"
    )
    # Registered after the awaited Deployment, so deleted before it on destroy: never an APIService
    # without its server, which would hold up every namespace's deletion.
    assert deployment(air, "metrics-server").urn in air.transitive_dependencies(api_service)
    assert metricsserver.METRICS_SERVER_IMAGE in offline.stack_images("e2e")


def test_every_node_asks_for_a_serving_certificate_after_it_joined(air: Evaluation) -> None:
    steps = {r.name: r for r in air.of_type("command:remote:Command") if r.name.endswith("-bootstrap")}
    assert sorted(steps) == [
        f"kube-on-air-serving-certs-{n}-bootstrap" for n in ("head10", "work11", "work12", "work13")
    ]
    work11 = air.transitive_dependencies(steps["kube-on-air-serving-certs-work11-bootstrap"])
    assert [r for r in air.resources if r.name == "work11-kubeadm-join" and r.urn in work11]
    # Not beside the API gate: an emulated control plane settles slower with SSH steps crowding it.
    (gate,) = [r for r in air.resources if r.name == "kube-on-air-api-steady"]
    (approver,) = [r for r in air.of_type("command:remote:Command") if r.name.endswith("-serving-certs-approver")]
    for step in (approver, steps["kube-on-air-serving-certs-head10-bootstrap"]):
        assert gate.urn in air.transitive_dependencies(step), step.name


def test_the_stateful_example_claims_a_volume_per_replica_of_the_default_class(stateful: Evaluation) -> None:
    (statefulset,) = stateful.of_type(STATEFUL_SET)
    spec = statefulset.plain("spec")
    (claim,) = spec["volumeClaimTemplates"]
    assert "storageClassName" not in claim["spec"], "the default class, whichever it is"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert spec["replicas"] >= 2
    # Switched off, the example takes its claims (and the nodes' directories) with it.
    assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    (storage_class,) = stateful.of_type(STORAGE_CLASS)
    assert storage_class.urn in stateful.transitive_dependencies(statefulset)
    assert spec["template"]["spec"]["containers"][0]["volumeMounts"] == [{"mountPath": "/data", "name": "data"}]


def scripts(tmp_path: Path) -> dict[str, Path]:
    written = {}
    for name, text in localpath.provisioner_config().items():
        if name in ("setup", "teardown"):
            path = tmp_path / name
            path.write_text(text)
            written[name] = path
    return written


def test_setup_and_teardown_make_and_remove_the_volume_directory(tmp_path: Path) -> None:
    written = scripts(tmp_path)
    require_valid(validate_shell_files(list(written.values())))
    volume = tmp_path / "opt" / "pvc-1_kube-on-air_data-stateful-0"
    env = {**os.environ, "VOL_DIR": str(volume), "VOL_MODE": "Filesystem", "VOL_SIZE_BYTES": "67108864"}
    subprocess.run(["sh", str(written["setup"])], env=env, check=True, timeout=10)
    assert volume.is_dir() and stat.S_IMODE(volume.stat().st_mode) == 0o777, "any pod's user may write it"
    (volume / "starts").write_text("one life\n")
    subprocess.run(["sh", str(written["teardown"])], env=env, check=True, timeout=10)
    assert not volume.exists()
    unset = subprocess.run(["sh", str(written["setup"])], env={"PATH": os.environ["PATH"]}, check=False, timeout=10)
    assert unset.returncode != 0, "no VOL_DIR, no directory made (set -u)"
