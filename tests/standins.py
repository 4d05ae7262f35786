"""A node's scripts run for real on this machine: stand-in commands on PATH, its files under $ROOT."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Self


@dataclass
class StandInNode:
    root: Path
    bin_dir: Path
    script: str
    stdin: str
    timeout: float = 60

    @classmethod
    def make(cls, tmp_path: Path, tools: dict[str, str], script: str, stdin: str) -> Self:
        """bin/ with each stand-in (name -> script text) and a root with /etc/kubernetes."""
        bin_dir, root = tmp_path / "bin", tmp_path / "root"
        bin_dir.mkdir()
        (root / "etc/kubernetes").mkdir(parents=True)
        for name, text in tools.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        return cls(root, bin_dir, script, stdin)

    def run(self, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "PATH": f"{self.bin_dir}:{os.environ['PATH']}", "ROOT": str(self.root), **env}
        return subprocess.run(
            ["/bin/bash", "-c", self.script],
            input=self.stdin,
            capture_output=True,
            text=True,
            env=environment,
            timeout=self.timeout,
            check=False,
        )

    def has(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists()

    def kubeadm_calls(self) -> list[str]:
        """What the stand-in kubeadm was asked, in order (it appends each subcommand to this file)."""
        calls = self.root / "kubeadm-calls"
        return calls.read_text().split() if calls.exists() else []


def stand_in(directory: Path, name: str, script: str) -> Path:
    """An executable `name` in `directory` (created if needed) that runs `script`: a fake tool for PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(script)
    path.chmod(0o755)
    return path
