"""The add-ons' CustomResourceDefinitions, applied before any other Kubernetes object.

Every new CRD makes the API server rebuild its OpenAPI document, and the Kubernetes provider fetches
that document again after creating one, giving up after 32 s (300 s with slowHost: tolerances.py).
Under emulation, MetalLB's eight CRDs applied beside the CNI and the other add-ons made that fetch
time out and fail them (the second real `up` of the metallb add-on). So the CRDs go first, alone,
and the same API gate `up` passes after `kubeadm init` runs again after them (answers in a row, the
OpenAPI document within its bound) before the CNI and everything after it start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
from pulumi_command import remote

from components.artifacts import render, ssh
from components.config.settings import ClusterConfig


@dataclass(frozen=True)
class CrdsArgs:
    config: ClusterConfig
    provider: k8s.Provider
    access: ssh.Access  # the gate runs on the control plane
    files: Sequence[Path]  # templates/addons/<add-on>/crds.yaml of each add-on switched on


class Crds(pulumi.ComponentResource):
    """Depend on `settled` to start once the CRDs exist and the API server serves its new OpenAPI document."""

    def __init__(self, name: str, args: CrdsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:crds:Crds", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        self.groups = {
            path.parent.name: k8s.yaml.v2.ConfigGroup(f"{name}-{path.parent.name}", yaml=path.read_text(), opts=child)
            for path in args.files
        }
        self.settled = remote.Command(
            f"{name}-settled",
            connection=args.access.connection(args.config.control_plane),
            create=render.api_steady_script(args.config),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(self.groups.values())),
        )
        self.register_outputs({"crds": sorted(self.groups)})
