"""The VM harness's SSH retry logic, without a VM: a refused connection is retried, a failing command is not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.vm.guest import Ssh, is_connection_failure


def completed(code: int, stderr: str = "", stdout: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["ssh"], code, stdout, stderr)


REFUSED = completed(255, "ssh: connect to host 172.31.255.11 port 22: Connection refused")


def test_connection_errors_are_told_apart_from_command_failures() -> None:
    assert is_connection_failure(REFUSED)
    assert is_connection_failure(completed(255, "kex_exchange_identification: read: Connection reset by peer"))
    assert not is_connection_failure(completed(255, "Permission denied (publickey)."))
    assert not is_connection_failure(completed(1, "Connection refused"))  # the remote command's own output
    assert not is_connection_failure(completed(0))


def scripted_ssh(monkeypatch: pytest.MonkeyPatch, replies: list[subprocess.CompletedProcess[str]]) -> list[str]:
    calls: list[str] = []

    def fake_run(self: Ssh, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return replies.pop(0)

    monkeypatch.setattr(Ssh, "run", fake_run)
    monkeypatch.setattr("tests.vm.guest.time.sleep", lambda _seconds: None)
    return calls


def test_refused_login_during_sshd_restart_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    done = completed(0, stdout="status: done\n")
    calls = scripted_ssh(monkeypatch, [REFUSED, REFUSED, done])
    proc = Ssh("kube", "172.31.255.11", Path("/nonexistent")).run_across_restarts("cloud-init status --wait", 60)
    assert proc is done
    assert calls == ["cloud-init status --wait"] * 3


def test_failing_command_is_returned_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    error = completed(1, stdout="status: error\n")
    calls = scripted_ssh(monkeypatch, [error, completed(0)])
    proc = Ssh("kube", "172.31.255.11", Path("/nonexistent")).run_across_restarts("cloud-init status --wait", 60)
    assert proc is error
    assert len(calls) == 1


def test_retries_stop_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = scripted_ssh(monkeypatch, [REFUSED] * 1000)
    proc = Ssh("kube", "172.31.255.11", Path("/nonexistent")).run_across_restarts("true", timeout=0.5)
    assert proc.returncode == 255
    assert len(calls) == 1  # no time left for a second try after the 2 s pause
