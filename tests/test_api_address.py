"""Issue 24 item 2 at level 3: the keepalived and HAProxy configuration of three control planes,
judged by the real tools (`haproxy -c`, `keepalived -t`) and shellcheck. Not wired into `up` yet."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from components.artifacts import apiaddress
from components.artifacts.apiaddress import ApiAddress
from tests.validators import find_tool, require_valid, validate_shell_texts

NODES = (("head12", "172.31.255.12"), ("head10", "172.31.255.10"), ("head11", "172.31.255.11"))
API = ApiAddress("172.31.255.9", 24, apiaddress.members_of(NODES))


def haproxy_check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return subprocess.run([find_tool("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True, check=False)


def keepalived_check(node: str, tmp_path: Path, text: str | None = None) -> subprocess.CompletedProcess[str]:
    """`keepalived -t` on a node's file, its check script at a real path (keepalived checks it exists and
    that only root may change it)."""
    check = tmp_path / "check-front-door.sh"
    check.write_text(apiaddress.check_script())
    check.chmod(0o755)
    path = tmp_path / f"keepalived-{node}.conf"
    path.write_text(text if text is not None else apiaddress.keepalived_config(API, node, str(check)))
    return subprocess.run([find_tool("keepalived"), "-t", "-f", str(path)], capture_output=True, text=True, check=False)


def test_haproxy_accepts_the_front_door_and_lists_every_control_plane(tmp_path: Path) -> None:
    text = apiaddress.haproxy_config(API)
    run = haproxy_check(text, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    servers = re.findall(r"^\s+server (\S+) (\S+)$", text, re.MULTILINE)
    assert servers == [
        ("head10", "172.31.255.10:6443"),
        ("head11", "172.31.255.11:6443"),
        ("head12", "172.31.255.12:6443"),
    ]
    assert f"bind *:{apiaddress.FRONT_DOOR_PORT}" in text


def test_haproxy_check_bites_on_a_broken_file(tmp_path: Path) -> None:
    broken = apiaddress.haproxy_config(API).replace("balance roundrobin", "balance someday")
    assert haproxy_check(broken, tmp_path).returncode != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="keepalived refuses a check script a non-root user owns")
@pytest.mark.parametrize("node", [name for name, _ in NODES])
def test_keepalived_accepts_each_control_planes_file(node: str, tmp_path: Path) -> None:
    run = keepalived_check(node, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="keepalived refuses a check script a non-root user owns")
def test_keepalived_check_bites_on_a_node_that_would_preempt(tmp_path: Path) -> None:
    """nopreempt needs every node to start as BACKUP; keepalived -t says so for MASTER."""
    text = apiaddress.keepalived_config(API, "head10", str(tmp_path / "check-front-door.sh"))
    run = keepalived_check("head10", tmp_path, text.replace("state BACKUP", "state MASTER"))
    assert run.returncode != 0, run.stdout + run.stderr


def test_the_nodes_agree_on_the_address_and_differ_in_priority_and_source() -> None:
    files = {name: apiaddress.keepalived_config(API, name) for name, _ in NODES}

    def one(pattern: str, text: str) -> str:
        found = re.findall(pattern, text)
        assert len(found) == 1, (pattern, found)
        return str(found[0])

    assert {one(r"virtual_router_id (\d+)", t) for t in files.values()} == {"9"}
    assert {one(r"(172\.31\.255\.9/24) dev eth0", t) for t in files.values()} == {"172.31.255.9/24"}
    priorities = {name: int(one(r"priority (\d+)", t)) for name, t in files.items()}
    assert priorities["head10"] > priorities["head11"] > priorities["head12"], priorities
    for name, address in NODES:
        assert one(r"unicast_src_ip (\S+)", files[name]) == address
        peers = re.search(r"unicast_peer \{([^}]*)\}", files[name])
        assert peers is not None
        assert sorted(peers.group(1).split()) == sorted(a for n, a in NODES if n != name)


def test_the_check_script_asks_the_local_front_door_and_passes_shellcheck() -> None:
    script = apiaddress.check_script()
    assert f"https://127.0.0.1:{apiaddress.FRONT_DOOR_PORT}/healthz" in script
    require_valid(validate_shell_texts({"check-front-door.sh": script}))


def test_the_endpoint_is_the_virtual_address_at_the_front_door() -> None:
    assert API.endpoint == "172.31.255.9:8443"
    assert set(apiaddress.node_files(API, "head11")) == {
        apiaddress.HAPROXY_CONFIG,
        apiaddress.KEEPALIVED_CONFIG,
        apiaddress.CHECK_PATH,
    }
