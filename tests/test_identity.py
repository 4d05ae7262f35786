"""A node's identity: what it covers (so a change rebuilds the node) and what it leaves alone."""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
    assert recorded is not None and recorded["kube-on-air"] == "t/head10" and recorded["identity"] == "2"
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
    (machine_only,) = identity.changed_settings(recorded, rekeyed)
    assert machine_only.startswith("what the node is on the network") and "hostKeyDir" in machine_only
    assert identity.changed_settings(recorded, head10(config)) == []


def test_the_templates_of_a_newer_kube_on_air_are_not_the_identity(
    config: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = head10(config)
    monkeypatch.setattr(render, "user_data", lambda *args: "#cloud-config\n# rendered otherwise\n")
    monkeypatch.setattr(render, "network_config", lambda *args: "version: 2\n")
    assert head10(config) == before


def version_1(config: ClusterConfig, host_key: HostKey = HOST_KEY) -> dict[str, str]:
    """The record a kube-on-air before identity version 2 gave head10: a digest of its rendered seed."""
    public_only = dataclasses.replace(host_key, private="")
    node = config.control_plane
    seed = hashlib.sha256(
        "\0".join([render.user_data(config, node, public_only), render.network_config(config, node)]).encode()
    ).hexdigest()
    settings = {"imageSource": config.image_source, "diskGiB": str(config.disk_gib), "prebaked": "false"}
    return {"kube-on-air": "t/head10", **settings, "kubernetesVersion": config.kubernetes_version, "seed": seed[:10]}


def test_a_node_built_before_version_2_keeps_its_identity(config: ClusterConfig, ssh_key: Path) -> None:
    recorded = version_1(config)
    kept = identity.node_identity(config, config.control_plane, HOST_KEY, recorded)
    # Byte for byte: the description is ForceNew in the provider, the generation names the disk and seed.
    assert kept.description == json.dumps(recorded, sort_keys=True)
    assert kept.generation != head10(config).generation
    grown = cluster_config(ssh_key, diskGiB="40")
    rebuilt = identity.node_identity(grown, grown.control_plane, HOST_KEY, recorded)
    assert rebuilt == head10(grown), "a named setting changed: the node is built anew, at version 2"
    assert identity.changed_settings(recorded, rebuilt) == ["kube-on-air:diskGiB: 20 -> 40"]
    other = {**recorded, "kube-on-air": "t/work11"}
    assert identity.node_identity(config, config.control_plane, HOST_KEY, other) == head10(config)


def test_a_version_2_record_is_never_taken_over(config: ClusterConfig) -> None:
    # Its digest is computed again, so a new host key shows as a change instead of being adopted.
    recorded = identity.parse_description(head10(config).description)
    assert recorded is not None
    rekeyed_key = dataclasses.replace(HOST_KEY, public="ssh-ed25519 BBBB head10")
    rekeyed = identity.node_identity(config, config.control_plane, rekeyed_key, recorded)
    assert rekeyed.generation != head10(config).generation


def test_records_are_read_back_from_our_descriptions_only(config: ClusterConfig) -> None:
    ours = head10(config).description
    assert identity.deployed_records(["a VM", ours, ""]) == {"t/head10": identity.parse_description(ours)}


@pytest.mark.parametrize("text", ["", "a VM", "[1, 2]", '{"name": "x"}', "{broken"])
def test_other_descriptions_are_not_ours(text: str) -> None:
    assert identity.parse_description(text) is None
