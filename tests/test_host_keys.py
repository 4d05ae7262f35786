"""Node SSH host keys: made once, installed by cloud-init, verified by every connection the program makes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import air_config
from tests.seeds import seed_of, seed_volumes
from tools.dryrun import Evaluation, evaluate

REMOTE = "command:remote:Command"


def two_fields(key: str) -> str:
    return " ".join(key.split()[:2])


def installed_host_keys(evaluation: Evaluation) -> dict[str, str]:
    """node -> the ed25519 public key its cloud-init seed installs."""
    keys = {}
    for volume in seed_volumes(evaluation):
        node = volume.name.removesuffix("-seed")
        ssh_keys = yaml.safe_load(seed_of(evaluation, node)["user-data"])["ssh_keys"]
        assert "PRIVATE KEY" in ssh_keys["ed25519_private"]
        keys[node] = two_fields(ssh_keys["ed25519_public"])
    return keys


def pinned_host_keys(evaluation: Evaluation) -> dict[str, set[str]]:
    """host address -> every host_key a remote command verifies for it."""
    pinned: dict[str, set[str]] = {}
    for command in evaluation.of_type(REMOTE):
        connection = command.plain("connection")
        assert connection.get("hostKey"), f"{command.name}: connects without verifying the host key"
        pinned.setdefault(connection["host"], set()).add(two_fields(connection["hostKey"]))
    return pinned


def test_every_connection_verifies_the_key_the_node_installs(air: Evaluation) -> None:
    installed = installed_host_keys(air)
    pinned = pinned_host_keys(air)
    addresses = {n["name"]: n["ip"] for n in air.outputs["nodes"]["value"]}
    assert set(pinned) == set(addresses.values())
    for node, key in installed.items():
        assert pinned[addresses[node]] == {key}, f"{node}: commands pin {pinned[addresses[node]]}, node has {key}"
    assert len(set(installed.values())) == len(installed), "every node has its own key"


def test_scaling_keeps_existing_keys_and_keys_new_workers(air: Evaluation, five: Evaluation) -> None:
    before, after = installed_host_keys(air), installed_host_keys(five)
    assert {node: after[node] for node in before} == before, "a node that stays keeps its identity"
    assert sorted(set(after) - set(before)) == ["work14", "work15"]
    assert len(set(after.values())) == 6


def test_known_hosts_file_lets_plain_ssh_verify_every_node(five: Evaluation) -> None:
    known_hosts = Path(five.outputs["knownHostsFile"]["value"])
    keys = installed_host_keys(five)
    addresses = {n["name"]: n["ip"] for n in five.outputs["nodes"]["value"]}
    for node, key in keys.items():
        for name in (node, addresses[node], f"{node}.air.internal"):
            # ssh-keygen -F is OpenSSH's own known_hosts lookup.
            found = subprocess.run(
                ["ssh-keygen", "-F", name, "-f", str(known_hosts)], capture_output=True, text=True, check=False
            )
            assert found.returncode == 0, f"{name} not in {known_hosts}"
            assert key in found.stdout
    for node, command in five.outputs["sshCommands"]["value"].items():
        assert f"UserKnownHostsFile={known_hosts}" in command and "StrictHostKeyChecking=yes" in command, node


def test_unusable_host_key_dir_is_one_config_error(ssh_key: Path) -> None:
    evaluation = evaluate("air", air_config(ssh_key, hostKeyDir="/proc/kube-on-air/host-keys"))
    assert evaluation.error is not None
    assert "kube-on-air:hostKeyDir = '/proc/kube-on-air/host-keys'" in evaluation.error
    assert "writable directory" in evaluation.error and "Traceback" not in evaluation.error
    assert evaluation.resources == [] or all(r.type == "pulumi:pulumi:Stack" for r in evaluation.resources)


def test_missing_ssh_keygen_is_one_config_error(ssh_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # the harness starts Python by absolute path; no ssh-keygen here
    evaluation = evaluate("air", air_config(ssh_key, hostKeyDir=str(tmp_path / "fresh-keys")))
    assert evaluation.error is not None
    assert "kube-on-air:hostKeyDir" in evaluation.error and "ssh-keygen not found on PATH" in evaluation.error
    assert "openssh-client" in evaluation.error and "Traceback" not in evaluation.error
