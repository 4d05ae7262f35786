"""`make toolchain`'s bookkeeping: replace directives, resumable pieces, the manifest and the cache key.

The builds themselves take hours; these tests run the builder's logic against pieces that only write a
file, and its go.mod handling against go.mod text in the shapes upstream modules use.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from tools import releases
from tools import toolchain as build

KUBERNETES_GO_MOD = """module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require k8s.io/api v0.0.0

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e // fork
)

replace github.com/pulumi/pulumi/sdk/v3 => ../sdk
replace github.com/hashicorp/go-getter => github.com/hashicorp/go-getter v1.4.0
"""


def test_replace_lines_reads_block_and_single_line_forms() -> None:
    assert build.replace_lines(KUBERNETES_GO_MOD) == [
        "k8s.io/api => ./staging/src/k8s.io/api",
        "github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e",
        "github.com/pulumi/pulumi/sdk/v3 => ../sdk",
        "github.com/hashicorp/go-getter => github.com/hashicorp/go-getter v1.4.0",
    ]


def test_only_replaces_into_the_upstream_tree_are_dropped() -> None:
    kept = [line for line in build.replace_lines(KUBERNETES_GO_MOD) if not build.is_local_replace(line)]
    assert kept == [
        "github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e",
        "github.com/hashicorp/go-getter => github.com/hashicorp/go-getter v1.4.0",
    ]


def writes_once(calls: list[str]) -> build.Piece:
    def make(ctx: build.Context, work: Path, out: Path) -> str:
        calls.append("built")
        (out / "tool").write_text("binary")
        return "example.com/tool@v1.0.0"

    return build.Piece("tool", make)


def test_a_built_piece_is_skipped_and_keeps_its_record(tmp_path: Path) -> None:
    calls: list[str] = []
    first = build.build_piece(writes_once(calls), tmp_path, "go1.26")
    second = build.build_piece(writes_once(calls), tmp_path, "go1.26")
    assert calls == ["built"]
    assert (first["this_run"], second["this_run"]) == ("built", "cached")
    assert second["outputs"] == {"tool": build.sha256(tmp_path / "pieces" / "tool" / "tool")}
    assert second["source"] == "example.com/tool@v1.0.0" and second["go"] == "go1.26"


def test_a_piece_built_by_an_earlier_recipe_is_built_again(tmp_path: Path) -> None:
    calls: list[str] = []
    build.build_piece(writes_once(calls), tmp_path, "go1.26")
    record = tmp_path / "pieces" / "tool.json"
    # A record from before recipes were kept counts as recipe 1.
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "recipe"}))
    assert build.build_piece(writes_once(calls), tmp_path, "go1.26")["this_run"] == "cached"
    newer = dataclasses.replace(writes_once(calls), recipe=2)
    assert build.build_piece(newer, tmp_path, "go1.26")["this_run"] == "built"
    assert build.build_piece(newer, tmp_path, "go1.26")["this_run"] == "cached"
    assert calls == ["built", "built"]


def test_a_killed_build_leaves_no_record_and_is_redone(tmp_path: Path) -> None:
    def dies_half_way(ctx: build.Context, work: Path, out: Path) -> str:
        (out / "half").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build.build_piece(build.Piece("tool", dies_half_way), tmp_path, "go1.26")
    assert not (tmp_path / "pieces" / "tool.json").exists()
    calls: list[str] = []
    record = build.build_piece(writes_once(calls), tmp_path, "go1.26")
    assert calls == ["built"] and record["this_run"] == "built"
    assert sorted(p.name for p in (tmp_path / "pieces" / "tool").iterdir()) == ["tool"]  # the half file is gone


def test_a_refused_module_is_reported_not_recorded(tmp_path: Path) -> None:
    def refused(ctx: build.Context, work: Path, out: Path) -> str:
        raise build.Unavailable("the Go module proxy answers '403 Forbidden' for example.com/x@v1")

    record = build.build_piece(build.Piece("x", refused), tmp_path, "go1.26")
    assert record["status"] == "unavailable" and "403 Forbidden" in record["reason"]
    assert not (tmp_path / "pieces" / "x.json").exists() and not (tmp_path / "pieces" / "x").exists()
    assert "UNAVAILABLE" in build.progress(record)


def test_the_manifest_lists_every_piece(tmp_path: Path) -> None:
    (tmp_path / "pieces").mkdir()
    earlier = {"piece": "kubernetes", "status": "built", "source": "k8s.io/kubernetes@v1.34.2"}
    (tmp_path / "pieces" / "kubernetes.json").write_text(json.dumps(earlier))
    now = [{"piece": "cri-tools", "status": "unavailable", "reason": "403", "this_run": "tried"}]
    entries = {e["piece"]: e for e in build.manifest_entries(tmp_path, now)}
    assert list(entries) == [p.name for p in build.PIECES]
    assert entries["kubernetes"] == earlier
    assert entries["cri-tools"] == {"piece": "cri-tools", "status": "unavailable", "reason": "403"}
    assert entries["pulumi"] == {"piece": "pulumi", "status": "not built yet"}


def test_the_cache_key_follows_the_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    key = build.cache_key("go1.26.8")
    assert key == build.cache_key("go1.26.8")
    assert key != build.cache_key("go1.27.3")
    monkeypatch.setattr(build, "PULUMI_VERSION", "3.999.0")
    assert key != build.cache_key("go1.26.8")


def test_python_sdks_match_the_pieces_built() -> None:
    """The engine loads the plugin version the Python SDK asks for, and the CLI must not be older."""
    pins = dict(line.split("==") for line in (build.ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert pins["pulumi"] == build.PULUMI_VERSION
    assert pins["pulumi-kubernetes"] == build.KUBERNETES_PROVIDER[0]


def test_missing_build_tools_are_named_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "")
    assert build.main([]) == 1
    assert capsys.readouterr().out.strip().splitlines() == [
        "[toolchain] missing build tools: Go >= 1.26 from https://go.dev/dl (go on PATH); "
        "sudo apt-get install gcc umoci skopeo mmdebstrap"
    ]


def fake_kubeadm(directory: Path, listed: list[str]) -> Path:
    """A kubeadm that answers `config images list` as the release's own would."""
    kubeadm = directory / "pieces" / "kubernetes" / "kubeadm"
    kubeadm.parent.mkdir(parents=True)
    kubeadm.write_text("#!/bin/sh\nprintf '%s\\n' " + " ".join(listed) + "\n")
    kubeadm.chmod(0o755)
    return kubeadm


def listed_by(directory: Path, listed: list[str], version: str) -> dict[str, str]:
    """What build_release reads from the release's kubeadm: image name -> tag."""
    return build.images_kubeadm_expects(fake_kubeadm(directory, listed), f"v{version}")


def toolchain_with(directory: Path, refs: list[str]) -> Path:
    images = directory / "pieces" / "images"
    images.mkdir(parents=True)
    (images / "images.txt").write_text("".join(f"{ref} {build.archive_name(ref)}\n" for ref in refs))
    return directory


CORE_1_34 = ["registry.k8s.io/etcd:3.6.5-0", "registry.k8s.io/coredns/coredns:v1.12.1", "registry.k8s.io/pause:3.10.1"]


def test_a_release_builds_its_own_kubernetes_images_and_reuses_the_toolchains_others(tmp_path: Path) -> None:
    kube = [f"registry.k8s.io/{c}:v1.34.4" for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
    wanted = listed_by(tmp_path / "release", [*kube, "registry.k8s.io/kube-proxy:v1.34.4", *CORE_1_34], "1.34.4")
    core = toolchain_with(tmp_path / "core", CORE_1_34)
    images = releases.release_images("1.34.4", wanted, core)
    assert sorted(i.ref for i in images) == sorted([*kube, "registry.k8s.io/kube-proxy:v1.34.4"])
    proxy = next(i for i in images if "kube-proxy" in i.ref)
    assert proxy.debian_packages == build.PROXY_PACKAGES  # iptables and ipset, as the toolchain's


def test_a_new_minors_etcd_and_coredns_are_built_for_its_release(tmp_path: Path) -> None:
    wanted = ["registry.k8s.io/etcd:3.6.6-0", "registry.k8s.io/coredns/coredns:v1.13.1"]
    apiserver = "registry.k8s.io/kube-apiserver:v1.35.4"
    listed = listed_by(tmp_path / "release", [apiserver, *wanted, CORE_1_34[2]], "1.35.4")
    core = toolchain_with(tmp_path / "core", CORE_1_34)
    images = releases.release_images("1.35.4", listed, core)
    assert {i.ref for i in images} >= set(wanted) and CORE_1_34[2] not in {i.ref for i in images}


def test_a_release_whose_kubeadm_wants_a_pause_the_toolchain_lacks_is_refused(tmp_path: Path) -> None:
    listed = listed_by(tmp_path / "release", [*CORE_1_34[:2], "registry.k8s.io/pause:3.10.2"], "1.36.1")
    core = toolchain_with(tmp_path / "core", CORE_1_34)
    with pytest.raises(build.Unavailable, match=re.escape("registry.k8s.io/pause:3.10.2")):
        releases.release_images("1.36.1", listed, core)
