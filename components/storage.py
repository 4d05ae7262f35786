"""The per-stack storage pool and the base cloud image every node's disk is layered on."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_libvirt as libvirt

from components.config.settings import BASE_VOLUME, ClusterConfig
from components.preflight.facts import KeptStore


@dataclass(frozen=True)
class ImageStoreArgs:
    config: ClusterConfig
    # What an earlier destroy with keepBaseImage left in libvirt: taken over, not created again
    # (the provider refuses to create a pool whose name exists).
    kept: KeptStore | None = None


class ImageStore(pulumi.ComponentResource):
    """A dir pool and the base image, downloaded (or uploaded from a local path) once per stack."""

    pool: libvirt.Pool
    base_image: libvirt.Volume

    def __init__(self, name: str, args: ImageStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kube-on-air:storage:ImageStore", name, None, opts)
        config, kept = args.config, args.kept
        self.pool = libvirt.Pool(
            f"{name}-pool",
            name=config.pool_name,
            type="dir",
            target=libvirt.PoolTargetArgs(path=config.pool_path),
            # A pool that still holds the kept base image cannot be deleted, so keep both.
            # A fixed name: never two at once (see Node).
            opts=pulumi.ResourceOptions(
                parent=self,
                retain_on_delete=config.keep_base_image,
                import_=kept.pool_uuid if kept else None,
                delete_before_replace=True,
            ),
        )
        self.base_image = libvirt.Volume(
            f"{name}-base",
            name=BASE_VOLUME,
            pool=self.pool.name,
            source=config.image_source,
            format="qcow2",
            # keepBaseImage: destroy leaves the downloaded image (and so its pool) in place.
            opts=pulumi.ResourceOptions(
                parent=self,
                retain_on_delete=config.keep_base_image,
                import_=kept.base_volume_key if kept else None,
                # libvirt does not say where a volume came from, so a kept base is taken over without
                # one, and every later `up` would otherwise replace it, and every disk on it (seen in a
                # real run). A new imageSource reaches the nodes through their identity (new disks),
                # which the control plane refuses; after a destroy the base goes unless it is kept.
                ignore_changes=["source"],
                delete_before_replace=True,
            ),
        )
        self.register_outputs({"pool": self.pool.name, "base_image_id": self.base_image.id})
