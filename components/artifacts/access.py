"""The Kubernetes provider's credentials: a ServiceAccount token, valid as long as the cluster.

kubeadm's admin.conf carries a client certificate that expires after one year; `kubeadm upgrade`
and `kubeadm certs renew` renew it on the control plane only, so a copy fetched once into the stack
stops working and with it every `up` and `destroy` of the Kubernetes layer. A pulumi-command Command
has no Read and re-runs only when its inputs change, so re-fetching "when it is about to expire"
would need a clock in the inputs. Instead the provider gets the token of a dedicated ServiceAccount
bound to cluster-admin, kept in a Secret of type kubernetes.io/service-account-token that the
program creates: such a token has no expiry, and Kubernetes' legacy-token cleaner only removes
Secrets that a ServiceAccount lists itself (auto-generated ones), which this one does not.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import yaml

SERVICE_ACCOUNT = "kube-on-air-pulumi"
TOKEN_SECRET = f"{SERVICE_ACCOUNT}-token"
ACCESS_NAMESPACE = "kube-system"


def access_objects() -> list[dict[str, Any]]:
    """ServiceAccount, its cluster-admin binding and its long-lived token Secret."""
    account = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": ACCESS_NAMESPACE}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": ACCESS_NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": SERVICE_ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [account],
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": TOKEN_SECRET,
                "namespace": ACCESS_NAMESPACE,
                "annotations": {"kubernetes.io/service-account.name": SERVICE_ACCOUNT},
            },
        },
    ]


def access_manifests() -> str:
    return yaml.safe_dump_all(access_objects(), sort_keys=False)


@dataclass(frozen=True)
class ProviderAccess:
    """What the control plane prints: admin.conf's cluster entry and the ServiceAccount's token."""

    cluster: str
    server: str
    ca_data: str
    token: str


MALFORMED = (
    "the provider credentials printed by the control plane are malformed "
    "(expected cluster name, https API server, base64 CA certificate and token, one a line)"
)


def parse_access(printed: str) -> ProviderAccess:
    """The four lines of the access script; the message never repeats them (the token is secret)."""
    lines = printed.split("\n")
    if lines[-1:] == [""]:
        lines.pop()
    if len(lines) != 4 or not all(line and not any(c.isspace() for c in line) for line in lines):
        raise ValueError(MALFORMED)
    cluster, server, ca_data, token = lines
    if not server.startswith("https://") or b"BEGIN CERTIFICATE" not in _decoded(ca_data):
        raise ValueError(MALFORMED)
    return ProviderAccess(cluster, server, ca_data, token)


def _decoded(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        return b""


def provider_kubeconfig(printed: str) -> str:
    """A kubeconfig for the provider: admin.conf's cluster entry unchanged, the token as the user.

    The cluster entry must stay exactly admin.conf's: pulumi-kubernetes replaces every resource of a
    provider whose active cluster changes (DiffConfig), and only the credentials change here.
    """
    access = parse_access(printed)
    context = f"{SERVICE_ACCOUNT}@{access.cluster}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": access.cluster,
                "cluster": {"certificate-authority-data": access.ca_data, "server": access.server},
            }
        ],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": access.token}}],
        "contexts": [{"name": context, "context": {"cluster": access.cluster, "user": SERVICE_ACCOUNT}}],
        "current-context": context,
    }
    return yaml.safe_dump(kubeconfig, sort_keys=False)
