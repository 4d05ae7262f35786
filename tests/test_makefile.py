"""The README's first command: `make up` sets up a local backend, a passphrase and a key, then runs Pulumi.

The Pulumi CLI cannot be installed here, so a stand-in `pulumi` on PATH records how make calls it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT

STACK = "koa-make-test"  # not air: `make kubeconfig` writes build/<stack>/
STAND_IN_PULUMI = """#!/bin/bash
{
  printf 'call: %s\\n' "$*"
  printf '  backend=%s passphrase_file=%s skip_update_check=%s\\n' \\
    "${PULUMI_BACKEND_URL:-}" "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" "${PULUMI_SKIP_UPDATE_CHECK:-}"
} >> "$PULUMI_CALLS"
if [[ "$*" == *"--show-secrets kubeconfig"* ]]; then echo "apiVersion: v1  # stand-in kubeconfig"; fi
"""


def make(tmp_path: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    fake_bin = tmp_path / "pulumi-bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "pulumi").write_text(STAND_IN_PULUMI)
    (fake_bin / "pulumi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "PULUMI_"))}
    env["PULUMI_CALLS"] = str(tmp_path / "calls.log")
    variables = [
        f"STACK={STACK}",
        f"STATE_DIR={tmp_path / 'state'}",
        f"SSH_KEY={tmp_path / 'ssh' / 'id_ed25519'}",
        f"PULUMI_BIN={fake_bin}",
    ]
    done = subprocess.run(
        ["make", "--no-print-directory", *targets, *variables],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"make {' '.join(targets)}:\n{done.stdout}\n{done.stderr}"
    return done


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


@pytest.fixture
def cleanup_build() -> Iterator[None]:
    yield
    shutil.rmtree(ROOT / "build" / STACK, ignore_errors=True)


def test_make_up_needs_no_account_and_is_repeatable(tmp_path: Path) -> None:
    make(tmp_path, "up")
    state, key = tmp_path / "state", tmp_path / "ssh" / "id_ed25519"
    env_line = f"  backend=file://{state} passphrase_file={state / 'passphrase'} skip_update_check=true"
    assert calls(tmp_path) == [
        f"call: stack select --create {STACK}", env_line,
        f"call: up --stack {STACK}", env_line,
    ]  # fmt: skip
    passphrase = (state / "passphrase").read_text()
    assert len(passphrase.strip()) >= 40 and stat.S_IMODE((state / "passphrase").stat().st_mode) == 0o600
    keygen = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, check=False)
    assert keygen.returncode == 0 and "(ED25519)" in keygen.stdout
    public_key = key.with_suffix(".pub").read_text()

    make(tmp_path, "up")
    assert (state / "passphrase").read_text() == passphrase, "a second run must not lock you out of the state"
    assert key.with_suffix(".pub").read_text() == public_key, "a second run must not replace the nodes' login key"
    assert calls(tmp_path)[-2] == f"call: up --stack {STACK}"


def test_seed_targets_map_to_pulumi(tmp_path: Path, cleanup_build: None) -> None:
    make(tmp_path, "clean")
    assert f"call: destroy --stack {STACK}" in calls(tmp_path)
    make(tmp_path, "ls")
    assert f"call: stack output --stack {STACK} nodes" in calls(tmp_path)
    done = make(tmp_path, "kubeconfig")
    written = ROOT / "build" / STACK / "kubeconfig"
    assert written.read_text().startswith("apiVersion: v1")
    assert stat.S_IMODE(written.stat().st_mode) == 0o600, "the admin kubeconfig is a secret"
    assert f"export KUBECONFIG={written}" in done.stdout
