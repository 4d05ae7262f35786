"""The local-path add-on: rancher's local-path-provisioner and the cluster's default StorageClass.

A PersistentVolumeClaim of the default class gets a directory under VOLUME_ROOT on the node its
first consumer is scheduled to (WaitForFirstConsumer), made and deleted by a helper pod running the
setup and teardown scripts of templates/addons/local-path/. The objects are upstream's
deploy/local-path-storage.yaml of the pinned version, with images this toolchain builds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes.apps.v1 import Deployment, DeploymentSpecArgs
from pulumi_kubernetes.core.v1 import (
    ConfigMap,
    ConfigMapVolumeSourceArgs,
    ContainerArgs,
    EnvVarArgs,
    EnvVarSourceArgs,
    Namespace,
    ObjectFieldSelectorArgs,
    PodSpecArgs,
    PodTemplateSpecArgs,
    ServiceAccount,
    VolumeArgs,
    VolumeMountArgs,
)
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs
from pulumi_kubernetes.rbac.v1 import (
    ClusterRole,
    ClusterRoleBinding,
    PolicyRuleArgs,
    Role,
    RoleBinding,
    RoleRefArgs,
    SubjectArgs,
)
from pulumi_kubernetes.storage.v1 import StorageClass

from components.artifacts.render import render
from components.workloads import APPLY_ONLY

# The newest the Go module proxy serves here (built by `make toolchain`).
VERSION = "v0.0.30"
LOCAL_PATH_IMAGE = f"docker.io/rancher/local-path-provisioner:{VERSION}"
# The helper pods' image: upstream's config names busybox (the toolchain makes it from Debian's).
BUSYBOX_IMAGE = "docker.io/library/busybox:1.35.0"
NAMESPACE = "local-path-storage"
NAME = "local-path-provisioner"
ACCOUNT = "local-path-provisioner-service-account"
STORAGE_CLASS = "local-path"
PROVISIONER = "rancher.io/local-path"
# On the node's own disk: a volume lives and dies with its node (and its disk).
VOLUME_ROOT = "/opt/local-path-provisioner"
CONFIG_PATH = "/etc/config/"
LABELS = {"app": NAME}


def images() -> tuple[str, ...]:
    return (LOCAL_PATH_IMAGE, BUSYBOX_IMAGE)


def provisioner_config() -> dict[str, str]:
    """The ConfigMap the provisioner reads (and re-reads when it changes)."""
    paths = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [VOLUME_ROOT]}]}
    return {
        "config.json": json.dumps(paths, indent=2),
        "setup": render("addons/local-path/setup.sh.j2", volume_root=VOLUME_ROOT),
        "teardown": render("addons/local-path/teardown.sh.j2", volume_root=VOLUME_ROOT),
        "helperPod.yaml": render("addons/local-path/helper-pod.yaml.j2", helper_image=BUSYBOX_IMAGE),
    }


@dataclass(frozen=True)
class LocalPathArgs:
    provider: k8s.Provider
    # Its pods need the pod network: applied once the CNI is ready.
    cni: pulumi.Resource


class LocalPath(pulumi.ComponentResource):
    """The provisioner and the default StorageClass; depend on it before claiming volumes."""

    def __init__(self, name: str, args: LocalPathArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:localpath:LocalPath", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.cni])
        self.namespace = Namespace(f"{name}-ns", metadata=ObjectMetaArgs(name=NAMESPACE), opts=child)
        in_namespace = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.namespace]))
        self.account = ServiceAccount(
            f"{name}-sa", metadata=ObjectMetaArgs(name=ACCOUNT, namespace=NAMESPACE), opts=in_namespace
        )
        grants = self._grants(name, child, in_namespace)
        self.config = ConfigMap(
            f"{name}-config",
            metadata=ObjectMetaArgs(name="local-path-config", namespace=NAMESPACE),
            data=provisioner_config(),
            opts=in_namespace,
        )
        self.deployment = Deployment(
            f"{name}-provisioner",
            # Applied, not awaited: nothing in `up` needs a volume, and a claim waits for the
            # provisioner by itself (an image a kept offline node lacks must not hold up `up`).
            metadata=ObjectMetaArgs(name=NAME, namespace=NAMESPACE, annotations=APPLY_ONLY),
            spec=DeploymentSpecArgs(
                replicas=1,
                selector=LabelSelectorArgs(match_labels=LABELS),
                template=PodTemplateSpecArgs(metadata=ObjectMetaArgs(labels=LABELS), spec=_provisioner_pod()),
            ),
            opts=pulumi.ResourceOptions.merge(
                in_namespace, pulumi.ResourceOptions(depends_on=[self.account, self.config, *grants])
            ),
        )
        self.storage_class = StorageClass(
            f"{name}-class",
            metadata=ObjectMetaArgs(
                name=STORAGE_CLASS, annotations={"storageclass.kubernetes.io/is-default-class": "true"}
            ),
            provisioner=PROVISIONER,
            volume_binding_mode="WaitForFirstConsumer",
            reclaim_policy="Delete",
            opts=child,
        )
        self.register_outputs({"storageClass": STORAGE_CLASS})

    def _grants(
        self, name: str, child: pulumi.ResourceOptions, in_namespace: pulumi.ResourceOptions
    ) -> list[pulumi.Resource]:
        read = ["get", "list", "watch"]
        write = [*read, "create", "patch", "update", "delete"]
        subject = SubjectArgs(kind="ServiceAccount", name=ACCOUNT, namespace=NAMESPACE)
        role = Role(
            f"{name}-role",
            metadata=ObjectMetaArgs(name="local-path-provisioner-role", namespace=NAMESPACE),
            rules=[PolicyRuleArgs(api_groups=[""], resources=["pods"], verbs=write)],
            opts=in_namespace,
        )
        cluster_role = ClusterRole(
            f"{name}-cluster-role",
            metadata=ObjectMetaArgs(name="local-path-provisioner-role"),
            rules=[
                PolicyRuleArgs(
                    api_groups=[""],
                    resources=["nodes", "persistentvolumeclaims", "configmaps", "pods", "pods/log"],
                    verbs=read,
                ),
                PolicyRuleArgs(api_groups=[""], resources=["persistentvolumes"], verbs=write),
                PolicyRuleArgs(api_groups=[""], resources=["events"], verbs=["create", "patch"]),
                PolicyRuleArgs(api_groups=["storage.k8s.io"], resources=["storageclasses"], verbs=read),
            ],
            opts=child,
        )
        binding = RoleBinding(
            f"{name}-binding",
            metadata=ObjectMetaArgs(name="local-path-provisioner-bind", namespace=NAMESPACE),
            role_ref=RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="Role", name="local-path-provisioner-role"
            ),
            subjects=[subject],
            opts=pulumi.ResourceOptions.merge(in_namespace, pulumi.ResourceOptions(depends_on=[role])),
        )
        cluster_binding = ClusterRoleBinding(
            f"{name}-cluster-binding",
            metadata=ObjectMetaArgs(name="local-path-provisioner-bind"),
            role_ref=RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="local-path-provisioner-role"
            ),
            subjects=[subject],
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[cluster_role])),
        )
        return [binding, cluster_binding]


def _provisioner_pod() -> PodSpecArgs:
    return PodSpecArgs(
        service_account_name=ACCOUNT,
        containers=[
            ContainerArgs(
                name=NAME,
                image=LOCAL_PATH_IMAGE,
                image_pull_policy="IfNotPresent",
                command=[NAME, "--debug", "start", "--config", f"{CONFIG_PATH}config.json"],
                volume_mounts=[VolumeMountArgs(name="config-volume", mount_path=CONFIG_PATH)],
                env=[
                    EnvVarArgs(
                        name="POD_NAMESPACE",
                        value_from=EnvVarSourceArgs(field_ref=ObjectFieldSelectorArgs(field_path="metadata.namespace")),
                    ),
                    EnvVarArgs(name="CONFIG_MOUNT_PATH", value=CONFIG_PATH),
                ],
            )
        ],
        volumes=[VolumeArgs(name="config-volume", config_map=ConfigMapVolumeSourceArgs(name="local-path-config"))],
    )
