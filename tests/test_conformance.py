"""tools/conformance.py: which specs `make conformance` runs, how it asks e2e.test for them, what it
reports. The suite itself runs in `make conformance` (level 1); that the focus and the images exist in
the built e2e.test is checked by `make test-toolchain` (level 3)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import conformance

FIXTURES = Path(__file__).parent / "fixtures" / "conformance"


def test_the_dry_run_listing_gives_each_spec_text_without_its_labels() -> None:
    texts = conformance.spec_texts((FIXTURES / "dry-run.txt").read_text())
    assert texts == [
        "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http "
        "[NodeConformance] [Conformance]",
        "[sig-network] Services should serve a basic endpoint from pods [Conformance]",
        "[sig-node] Lease lease API should be available [Conformance]",
    ]


def test_a_focus_pattern_matches_its_spec_and_no_spec_that_merely_contains_it() -> None:
    spec = "[sig-node] Pods should be updated [NodeConformance] [Conformance]"
    pattern = conformance.focus_argument(spec).removeprefix("--ginkgo.focus=")
    assert re.search(pattern, f" {spec}") and re.search(pattern, spec)
    assert not re.search(pattern, f" [sig-apps] Wrapper {spec} [Slow]")
    assert not re.search(pattern, f"{spec[:-1]}")
    assert not re.search(pattern, f" x{spec}")


def test_the_suite_runs_the_focus_alone_against_the_given_cluster_within_its_limit(tmp_path: Path) -> None:
    specs = ["[sig-node] Lease lease API should be available [Conformance]", "[sig-x] y [Conformance]"]
    argv = conformance.suite_argv(tmp_path / "e2e.test", tmp_path / "kubeconfig", tmp_path / "out", specs)
    assert argv[0] == str(tmp_path / "e2e.test")
    assert f"--kubeconfig={tmp_path / 'kubeconfig'}" in argv and f"--report-dir={tmp_path / 'out'}" in argv
    assert [a for a in argv if a.startswith("--ginkgo.focus=")] == [conformance.focus_argument(s) for s in specs]
    assert f"--ginkgo.timeout={conformance.SUITE_TIMEOUT_SECONDS}s" in argv


def test_every_spec_outside_the_focus_is_listed_with_a_reason() -> None:
    listed = ["[sig-a] one [Conformance]", "[sig-b] two [Conformance]", "[sig-c] three [Conformance]"]
    left_out = conformance.not_run(listed, ["[sig-b] two [Conformance]"])
    assert sorted(left_out) == ["[sig-a] one [Conformance]", "[sig-c] three [Conformance]"]
    assert all(reason.strip() for reason in left_out.values())


def test_the_focus_is_specs_of_the_three_sigs_once_each() -> None:
    assert conformance.FOCUS, "an empty focus would pass without running anything"
    assert len(set(conformance.FOCUS)) == len(conformance.FOCUS)
    for spec in conformance.FOCUS:
        assert spec.split("]")[0].removeprefix("[") in conformance.SIGS and spec.endswith("[Conformance]"), spec


def test_results_are_the_focused_specs_of_the_junit_report_with_their_outcome() -> None:
    focus = [
        "[sig-node] Lease lease API should be available [Conformance]",
        "[sig-network] Services should serve a basic endpoint from pods [Conformance]",
        "[sig-node] Pods should be updated [NodeConformance] [Conformance]",
    ]
    found = {r.name: r for r in conformance.results(FIXTURES / "junit_01.xml", focus)}
    assert sorted(found) == sorted(focus), "the suite's setup nodes and the unfocused specs are left out"
    assert found[focus[0]].outcome == "passed" and found[focus[0]].seconds == pytest.approx(2.5)
    assert found[focus[1]].outcome == "failed" and "timed out" in found[focus[1]].message
    assert found[focus[2]].outcome == "skipped"


def test_the_summary_counts_each_outcome_and_the_specs_never_reached() -> None:
    found = [
        conformance.SpecResult("a", 1.0, "passed"),
        conformance.SpecResult("b", 2.0, "failed", "x"),
        conformance.SpecResult("c", 3.0, "passed"),
    ]
    line = conformance.summary(found, focused=4, seconds=61.4)
    assert line == "2 passed, 1 failed, 0 skipped, 1 not reached of 4 focused specs in 61 s"


def test_images_a_node_lacks_are_streamed_into_it_from_the_toolchains_archives(tmp_path: Path) -> None:
    (tmp_path / "images.txt").write_text("".join(f"{ref} {i}.tar\n" for i, ref in enumerate(conformance.IMAGES)))
    # head10's node image already has agnhost (the connectivity check's); work11 has none of them.
    present = {"head10": f"registry.k8s.io/pause:3.10.1\n{conformance.IMAGES[0]}\n", "work11": ""}
    asked: list[tuple[str, str]] = []
    streamed: list[tuple[str, str, Path]] = []

    def run(node: str, command: str) -> str:
        asked.append((node, command))
        return present[node]

    imported = conformance.import_images(
        ["head10", "work11"], tmp_path / "images.txt", run, lambda *c: streamed.append(c)
    )
    assert imported == {"head10": list(conformance.IMAGES[1:]), "work11": list(conformance.IMAGES)}
    assert asked == [("head10", conformance.LIST), ("work11", conformance.LIST)]
    assert [(c[0], c[2].name) for c in streamed] == [
        *(("head10", f"{i}.tar") for i in range(1, len(conformance.IMAGES))),
        *(("work11", f"{i}.tar") for i in range(len(conformance.IMAGES))),
    ]
    # Into the namespace the kubelet's containerd uses, from stdin: nothing left on the node's disk.
    assert {c[1] for c in streamed} == {"sudo ctr -n k8s.io images import -"}


def test_an_image_the_toolchain_lacks_is_named_before_anything_is_streamed(tmp_path: Path) -> None:
    (tmp_path / "images.txt").write_text(f"{conformance.IMAGES[0]} a.tar\n")
    calls: list[object] = []
    with pytest.raises(LookupError, match=re.escape(conformance.JESSIE_DNSUTILS_IMAGE)) as raised:
        conformance.import_images(["head10"], tmp_path / "images.txt", lambda *c: "", lambda *c: calls.append(c))
    assert "make toolchain" in str(raised.value) and calls == []
