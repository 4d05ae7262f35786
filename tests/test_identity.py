"""A node's identity: what it covers (so a change rebuilds the node) and what it leaves alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from components.artifacts import identity, render
from components.artifacts.hostkeys import HostKey
from components.config.settings import ClusterConfig
from tests.conftest import cluster_config

HOST_KEY = HostKey(private="-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n", public="ssh-ed25519 AAAAC3Nza head10")


def head10(config: ClusterConfig, host_key: HostKey = HOST_KEY) -> identity.NodeIdentity:
    return identity.node_identity(config, config.control_plane, host_key)


@pytest.mark.parametrize(
    "change",
    [
        {"kubernetesVersion": "1.34.3"},
        {"prebaked": "true"},
        {"sshUser": "admin"},
        {"dnsDomain": "lab.internal"},
        {"imageSource": "/srv/images/node.qcow2"},
        {"diskGiB": "40"},
        {"networkCidr": "172.31.254.0/24"},
    ],
)
def test_what_shapes_the_disk_changes_it(config: ClusterConfig, ssh_key: Path, change: dict[str, str]) -> None:
    assert head10(cluster_config(ssh_key, **change)).generation != head10(config).generation


def test_a_new_host_key_or_login_key_changes_it(config: ClusterConfig) -> None:
    assert head10(config, dataclasses.replace(HOST_KEY, public="ssh-ed25519 BBBB head10")).generation != (
        head10(config).generation
    )
    other_login = dataclasses.replace(config, ssh_public_key="ssh-ed25519 CCCC someone-else")
    assert head10(other_login).generation != head10(config).generation


@pytest.mark.parametrize(
    "change",
    [
        {"workerCount": "5"},
        {"workerMemoryMiB": "4096"},
        {"controlPlaneMemoryMiB": "4096"},  # a bigger VM on the same disk: the domain alone is replaced
        {"cni": "calico"},
        {"workloads": "[]"},
        {"keepBaseImage": "true"},
    ],
)
def test_everything_else_keeps_the_generation(config: ClusterConfig, ssh_key: Path, change: dict[str, str]) -> None:
    assert head10(cluster_config(ssh_key, **change)).generation == head10(config).generation
    assert head10(config).generation == head10(config).generation  # no clock, no randomness


def test_the_private_host_key_never_reaches_a_plain_value(config: ClusterConfig) -> None:
    other_private = dataclasses.replace(HOST_KEY, private="-----BEGIN OPENSSH PRIVATE KEY-----\nother\n")
    assert head10(config, other_private) == head10(config)
    assert "secret" not in head10(config).description


def test_instance_id_and_volume_names_carry_the_generation(config: ClusterConfig) -> None:
    generation = head10(config).generation
    assert len(generation) == identity.GENERATION_HEX
    cp = config.control_plane
    assert identity.disk_volume_name(cp, generation) == f"head10-{generation}.qcow2"
    assert identity.seed_volume_name(cp, generation) == f"head10-cidata-{generation}.iso"
    meta_data = render.meta_data(cp, identity.instance_id(config, cp, generation))
    assert f'instance-id: "t-head10-{generation}"' in meta_data


def test_the_description_names_what_changed(config: ClusterConfig, ssh_key: Path) -> None:
    recorded = identity.parse_description(head10(config).description)
    assert recorded is not None and recorded["kube-on-air"] == "t/head10"
    newer = head10(cluster_config(ssh_key, kubernetesVersion="1.35.0", diskGiB="40"))
    assert identity.changed_settings(recorded, newer) == [
        "kube-on-air:diskGiB: 20 -> 40",
        "kube-on-air:kubernetesVersion: 1.34.2 -> 1.35.0",
    ]
    prebaked = head10(cluster_config(ssh_key, prebaked="true"))
    assert identity.changed_settings(recorded, prebaked) == [
        "kube-on-air:kubernetesVersion: 1.34.2 -> (unset)",
        "kube-on-air:prebaked: false -> true",
    ]
    rekeyed = head10(config, dataclasses.replace(HOST_KEY, public="ssh-ed25519 BBBB head10"))
    (seed_only,) = identity.changed_settings(recorded, rekeyed)
    assert seed_only.startswith("the cloud-init seed") and "hostKeyDir" in seed_only
    assert identity.changed_settings(recorded, head10(config)) == []


@pytest.mark.parametrize("text", ["", "a VM", "[1, 2]", '{"name": "x"}', "{broken"])
def test_other_descriptions_are_not_ours(text: str) -> None:
    assert identity.parse_description(text) is None
