"""`make plugins`: the pieces an offline host takes from a directory, checked against the pins first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import offline, toolchain

HOST = '#!/bin/sh\n[ "$1" = -version ] && echo {version}\n'


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A toolchain with a CLI linked into bin/ as make toolchain does (never run: schema versions are stubbed)."""
    (tmp_path / "home" / "bin").mkdir(parents=True)
    (tmp_path / "home" / "pieces" / "pulumi").mkdir(parents=True)
    (tmp_path / "home" / "pieces" / "pulumi" / "pulumi").write_text("")
    (tmp_path / "home" / "bin" / "pulumi").symlink_to(tmp_path / "home" / "pieces" / "pulumi" / "pulumi")
    return tmp_path / "home"


def plugin_dir(tmp_path: Path, names: list[str], host_version: str = "v3.259.0") -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    for name in names:
        (directory / name).write_text(HOST.format(version=host_version) if "language" in name else "")
        (directory / name).chmod(0o755)
    return directory


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    calls: list[tuple[str, str, str]] = []
    monkeypatch.setattr(toolchain, "register_plugin", lambda h, n, v, b: calls.append((n, v, b.name)))
    return calls


ALL = [
    "pulumi-resource-libvirt",
    "pulumi-resource-command",
    offline.LANGUAGE_HOST,
    offline.LANGUAGE_HOST_EXEC,
]


def test_the_plugins_match_the_python_sdk_pins() -> None:
    pins = offline.sdk_pins()
    assert {p.name: p.version for p in offline.offline_plugins()} == {
        "libvirt": pins["pulumi-libvirt"],
        "command": pins["pulumi-command"],
    }


def test_a_right_directory_registers_every_plugin_and_places_the_language_host(
    tmp_path: Path, home: Path, registered: list[tuple[str, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = {p.binary: p.version for p in offline.offline_plugins()}
    monkeypatch.setattr(offline, "schema_version", lambda h, binary: versions[binary.name])
    assert offline.register_plugins(home, plugin_dir(tmp_path, ALL)) == []
    assert sorted(registered) == sorted((p.name, p.version, p.binary) for p in offline.offline_plugins())
    # Beside the real CLI, where the engine looks for a bundled language host; not on PATH (bin/).
    beside = home / "pieces" / "pulumi"
    assert (beside / offline.LANGUAGE_HOST).exists() and (beside / offline.LANGUAGE_HOST_EXEC).exists()
    assert not (home / "bin" / offline.LANGUAGE_HOST).exists()


def test_missing_and_wrong_pieces_are_named_with_how_a_connected_host_gets_them(
    tmp_path: Path, home: Path, registered: list[tuple[str, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offline, "schema_version", lambda h, binary: "0.4.0")
    directory = plugin_dir(tmp_path, ["pulumi-resource-libvirt", offline.LANGUAGE_HOST], host_version="v3.999.0")
    problems = offline.register_plugins(home, directory)
    assert registered == [], "nothing wrong is registered"
    libvirt, command, host = problems
    assert libvirt.startswith("pulumi-resource-libvirt is 0.4.0, want 0.5.4")
    assert "pulumi plugin install resource libvirt 0.5.4" in libvirt
    assert command.startswith("pulumi-resource-command 1.2.1:") and "resource-command-v1.2.1" in command
    assert host.startswith("pulumi-language-python and pulumi-language-python-exec")
    (directory / offline.LANGUAGE_HOST_EXEC).write_text("")
    assert offline.language_host_problem(directory) is not None  # v3.999.0 is newer than the CLI
    assert "want v3.x up to" in str(offline.language_host_problem(directory))


def test_status_names_what_a_real_up_still_lacks(home: Path) -> None:
    lacking = offline.registered_problems(home)
    assert "kubeadm (run make toolchain)" in lacking
    assert "plugin libvirt 0.5.4 (make plugins)" in lacking
    assert f"plugin kubernetes {toolchain.KUBERNETES_PROVIDER[0]} (make toolchain)" in lacking
    assert "pulumi-language-python (make plugins)" in lacking


def test_the_images_a_stack_runs_follow_its_cni_and_workloads() -> None:
    images = offline.stack_images("air")
    assert "docker.io/cloudnativelabs/kube-router:v2.11.1" in images
    assert "gcr.io/kuar-demo/kuard-amd64:1" in images
    assert "localhost/kube-on-air/dnstools:bookworm-1" in images
    assert all(not ref.endswith(":latest") for ref in images)


def test_status_counts_an_image_only_once_an_archive_carries_it(tmp_path: Path, home: Path) -> None:
    """make e2e runs only when every image the stack runs is in the toolchain or IMAGE_DIR."""
    import io
    import json
    import tarfile

    images = tmp_path / "images"
    images.mkdir()
    assert "docker.io/cloudnativelabs/kube-router:v2.11.1" in offline.missing_images(home, "e2e", images)
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["docker.io/cloudnativelabs/kube-router:v2.11.1"]}])
    with tarfile.open(images / "kube-router.tar", "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest.encode()))
    assert "docker.io/cloudnativelabs/kube-router:v2.11.1" not in offline.missing_images(home, "e2e", images)
    assert "gcr.io/kuar-demo/kuard-amd64:1" in offline.missing_images(home, "e2e", images)


def test_a_language_host_in_use_is_replaced_by_rename_not_overwritten(tmp_path: Path) -> None:
    """make plugins while a pulumi runs: writing over the running host fails with ETXTBSY."""
    source, target = tmp_path / "new-host", tmp_path / "host"
    source.write_text("v2")
    target.write_text("v1")
    before = target.stat().st_ino
    offline.install_beside(source, target)
    assert target.read_text() == "v2" and target.stat().st_ino != before  # a new file, the old one untouched
    same = target.stat().st_ino
    offline.install_beside(source, target)
    assert target.stat().st_ino == same  # already in place: nothing written
