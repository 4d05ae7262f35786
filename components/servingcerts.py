"""Kubelet serving certificates signed by the cluster CA, and the approver that lets that happen.

Every kubelet runs with serverTLSBootstrap: it asks for its serving certificate (and for a new one
before that expires) with a CSR of signer kubernetes.io/kubelet-serving, which Kubernetes signs only
once approved. kubeadm approves none of these, so kube-on-air's approver does, on the control plane,
for a node asking for itself only (templates/scripts/lib/serving-approver.py.j2). metrics-server then
checks each kubelet against the cluster CA instead of skipping TLS verification.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.artifacts import render, ssh
from components.config.settings import ClusterConfig
from components.kubeadm import ControlPlane, WorkerJoin


@dataclass(frozen=True)
class ServingCertsArgs:
    config: ClusterConfig
    access: ssh.Access
    control_plane: ControlPlane
    joins: Mapping[str, WorkerJoin]  # worker name -> its join
    # Nothing needs a serving certificate before the Kubernetes layer: these steps wait for the API
    # gate rather than crowd the control plane's CPU while its API server settles after init (an
    # emulated control plane's gate took 76 s with them beside it, 21-25 s without).
    api_steady: pulumi.Resource


class ServingCerts(pulumi.ComponentResource):
    """The approver on the control plane, and serverTLSBootstrap on each node's kubelet."""

    def __init__(self, name: str, args: ServingCertsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:servingcerts:ServingCerts", name, None, opts)
        config, init = args.config, args.control_plane.init
        cp = config.control_plane
        self.approver = remote.Command(
            f"{name}-approver",
            connection=args.access.connection(cp),
            create=render.install_serving_approver_script(config),
            add_previous_output_in_env=False,
            triggers=[init.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[init, args.api_steady]),
        )
        # A no-op on nodes kubeadm configured so; the nodes of a cluster made before get it here.
        self.bootstrap = {cp.name: self._bootstrap(name, args, cp.name, init)}
        for worker, join in args.joins.items():
            self.bootstrap[worker] = self._bootstrap(name, args, worker, join.join)
        self.register_outputs({"approver": self.approver.id})

    def _bootstrap(self, name: str, args: ServingCertsArgs, node: str, joined: pulumi.CustomResource) -> remote.Command:
        spec = next(n for n in args.config.nodes if n.name == node)
        return remote.Command(
            f"{name}-{node}-bootstrap",
            connection=args.access.connection(spec),
            create=render.kubelet_serving_script(),
            add_previous_output_in_env=False,
            triggers=[joined.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[joined, args.api_steady]),
        )
