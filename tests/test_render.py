"""`make render` hands out what `pulumi up` would for the same stack, and says what is wrong in one message."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from components.config.settings import DEFAULTS
from tools import render
from tools.dryrun import ROOT, Evaluation

MAKE = shutil.which("make") or "make"


def nodes(out: Path) -> list[dict[str, str]]:
    summary: list[dict[str, str]] = json.loads((out / "summary.json").read_text())["nodes"]
    return summary


def test_host_keys_come_from_the_programs_host_key_dir(
    tmp_path: Path, ssh_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "out"
    assert render.main(["--stack", "air", "--out", str(out), "--set", f"sshKeyPath={ssh_key}"]) == 0
    # The program's default, expanded as it would be under `pulumi up` for this user.
    host_key_dir = Path(os.path.expanduser(DEFAULTS["hostKeyDir"].replace("{stack}", "air")))
    assert host_key_dir.is_relative_to(tmp_path)
    for node in nodes(out / "air"):
        public = (host_key_dir / f"{node['name']}_ed25519.pub").read_text().split()[:2]
        assert node["host_key"].split()[:2] == public, node["name"]


def test_a_stack_without_a_stack_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--stack", "nosuch", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()], err
    assert "no stack file Pulumi.nosuch.yaml" in err and "cp Pulumi.air.yaml Pulumi.nosuch.yaml" in err
    assert not (tmp_path / "nosuch").exists()


def run_make_render(tmp_path: Path, args: str) -> subprocess.CompletedProcess[str]:
    """`make render` for the air stack as a user with home `tmp_path` runs it (its key is made there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))} | {"HOME": str(tmp_path)}
    return subprocess.run(
        [MAKE, "-s", "--no-print-directory", "render", f"ARGS={args} --out {tmp_path / 'out'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_make_render_passes_set_overrides(tmp_path: Path) -> None:
    done = run_make_render(tmp_path, "--set workerCount=5")
    assert done.returncode == 0, done.stderr
    names = sorted(n["name"] for n in nodes(tmp_path / "out" / "air"))
    assert names == ["head10", *(f"work{i}" for i in range(11, 16))]


def test_make_render_config_mistake_is_the_programs_message_without_a_traceback(tmp_path: Path) -> None:
    done = run_make_render(tmp_path, "--set workerCont=5 --set cni=flannel")
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if not line.startswith("make: ***")]
    assert ours == [
        "invalid stack configuration (2 problem(s)); edit Pulumi.air.yaml or pass --set <key>=<value> (make render "
        'ARGS="--set <key>=<value>"):',
        "  kube-on-air:workerCont = '5': unknown key; did you mean kube-on-air:workerCount?",
        "  kube-on-air:cni = 'flannel': use one of: kube-router, calico",
    ], done.stderr
    assert not (tmp_path / "out" / "air").exists()


def test_manifests_are_numbered_in_apply_order_whatever_the_registration_order(air: Evaluation) -> None:
    objects = [r for r in render.kubernetes_objects(air) if not r.type.startswith("pulumi:providers")]
    assert len(objects) >= 10, "the air stack's CNI and workload objects"
    ordered = [r.urn for r in render.in_apply_order(air, objects)]
    # The mock runtime registers objects whose inputs resolve together in any order: any order gives the same.
    for seed in range(5):
        shuffled = objects[:]
        random.Random(seed).shuffle(shuffled)
        assert [r.urn for r in render.in_apply_order(air, shuffled)] == ordered
    position = {urn: n for n, urn in enumerate(ordered)}
    for resource in objects:
        for dependency in render.expanded_dependencies(air, resource) & position.keys():
            assert position[dependency] < position[resource.urn], f"{resource.name} before what it waits for"
