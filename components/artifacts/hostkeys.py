"""SSH host keys for the nodes, made once on the Pulumi host and pinned everywhere we connect.

cloud-init installs each node's key (user-data `ssh_keys`), so the program knows a node's identity
before the VM exists: pulumi-command verifies it (`host_key`), and the delete-time script and the
exported SSH commands use a known_hosts file. Keys live in `hostKeyDir` and are reused on every
evaluation, so two runs with the same config hand out identical inputs; a new worker gets a new key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.config.settings import ClusterConfig, ConfigError, ConfigProblem, NodeSpec

KEY_TYPE = "ed25519"
KNOWN_HOSTS = "known_hosts"


@dataclass(frozen=True)
class HostKey:
    private: str  # OpenSSH private key text (a secret)
    public: str  # "ssh-ed25519 AAAA... comment", the form pulumi-command's host_key expects

    @property
    def public_without_comment(self) -> str:
        return " ".join(self.public.split()[:2])


def ensure_host_keys(config: ClusterConfig) -> dict[str, HostKey]:
    """Each node's host key, made now if missing; also (re)writes `hostKeyDir/known_hosts`."""
    directory = Path(config.host_key_dir)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = {node.name: _ensure_key(directory, config, node) for node in config.nodes}
        _write_atomically(directory / KNOWN_HOSTS, known_hosts(config, keys), 0o644)
    except (OSError, subprocess.CalledProcessError) as err:
        raise ConfigError(
            [
                ConfigProblem(
                    "hostKeyDir",
                    config.host_key_dir,
                    f"node host keys cannot be kept there ({_reason(err)}); use a writable directory "
                    "on the Pulumi host and make sure ssh-keygen (openssh-client) is installed",
                )
            ]
        ) from err
    return keys


def known_hosts(config: ClusterConfig, keys: Mapping[str, HostKey]) -> str:
    """known_hosts lines naming each node in `keys` by address, short name and FQDN."""
    lines = [
        f"{node.ip},{node.name},{config.fqdn(node)} {keys[node.name].public_without_comment}"
        for node in config.nodes
        if node.name in keys
    ]
    return "\n".join(lines) + "\n"


def known_hosts_path(config: ClusterConfig) -> str:
    return str(Path(config.host_key_dir) / KNOWN_HOSTS)


def _ensure_key(directory: Path, config: ClusterConfig, node: NodeSpec) -> HostKey:
    private_path = directory / f"{node.name}_{KEY_TYPE}"
    public_path = Path(f"{private_path}.pub")
    if not (private_path.exists() and public_path.exists()):
        _generate(private_path, comment=config.fqdn(node))
    return HostKey(private=private_path.read_text(), public=public_path.read_text().strip())


def _generate(private_path: Path, comment: str) -> None:
    """ssh-keygen into a scratch directory, then rename: an interrupted run never leaves half a pair."""
    if shutil.which("ssh-keygen") is None:
        raise OSError("ssh-keygen not found on PATH")
    with tempfile.TemporaryDirectory(dir=private_path.parent) as scratch:
        fresh = Path(scratch) / private_path.name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", KEY_TYPE, "-N", "", "-C", comment, "-f", str(fresh)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        os.replace(f"{fresh}.pub", f"{private_path}.pub")
        os.replace(fresh, private_path)


def _write_atomically(path: Path, text: str, mode: int) -> None:
    if path.exists() and path.read_text() == text:
        return
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
        handle.write(text)
    os.chmod(handle.name, mode)
    os.replace(handle.name, path)


def _reason(err: OSError | subprocess.CalledProcessError) -> str:
    if isinstance(err, subprocess.CalledProcessError):
        stderr = err.stderr.decode(errors="replace").strip() if isinstance(err.stderr, bytes) else str(err.stderr)
        return f"ssh-keygen exited {err.returncode}: {stderr}"
    return f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
