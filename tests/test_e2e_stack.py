"""The e2e harness's reading of a failed pulumi command (tests/e2e/stack.py)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.stack import CommandRecord, api_server_cuts

CUT = (
    '    error: resource "urn:pulumi:e2e::kube-on-air::kubernetes:apps/v1:StatefulSet::stateful" was not'
    " successfully created by the Kubernetes API server: Timeout: request did not complete within"
    " requested timeout - context deadline exceeded"
)


def record(tmp_path: Path, code: int | None, *lines: str) -> CommandRecord:
    log = tmp_path / "up.log"
    log.write_text("\n".join(["Diagnostics:", *lines, "Resources:"]) + "\n")
    return CommandRecord("up-first", ["up", "--yes"], 1.0, code, str(log))


def test_a_failed_up_cut_by_the_api_server_names_what_was_cut(tmp_path: Path) -> None:
    (cut,) = api_server_cuts(record(tmp_path, 1, CUT, "    error: update failed"))
    assert "StatefulSet::stateful" in cut


def test_any_other_failure_is_no_cut(tmp_path: Path) -> None:
    refused = '    error: resource "urn:x" was not successfully created: admission webhook denied the request'
    assert api_server_cuts(record(tmp_path, 1, refused, "    error: update failed")) == []
    # The message in an up that passed (a retried step's output) is no failure to answer.
    assert api_server_cuts(record(tmp_path, 0, CUT)) == []
    # A killed up is no cut either, whatever its log holds up to then.
    assert api_server_cuts(record(tmp_path, None, "    warning: still waiting")) == []
