"""Talking to a booting node VM over SSH, and turning every way a boot can fail into a readable reason."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class BootFailure(AssertionError):
    """The VM did not become usable; the message carries the reason and console evidence."""


class CloudInitError(BootFailure):
    """cloud-init finished in error; the message starts with `cloud-init status: error:`."""


def console_tail(path: Path, lines: int = 40) -> str:
    """The last lines of the serial console log, without terminal escapes."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(no serial console log: {err})"
    clean = [ANSI.sub("", line).rstrip() for line in text.splitlines()]
    return "\n".join([line for line in clean if line.strip()][-lines:])


def console_cloud_init_lines(path: Path, limit: int = 15) -> list[str]:
    """cloud-init's warnings as printed on the console (its units log to journal+console)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    found = [
        ANSI.sub("", line).strip()
        for line in text.splitlines()
        if "cloud-init" in line and re.search(r"WARNING|ERROR|Traceback|[Ff]ailed", line)
    ]
    return found[-limit:]


@dataclass(frozen=True)
class Ssh:
    user: str
    host: str
    key: Path
    known_hosts: Path | None = None  # when set, the node must present the key listed there

    def argv(self, command: str, *, batch_options: tuple[str, ...] = ()) -> list[str]:
        if self.known_hosts is None:
            host_keys = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            host_keys = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}"]
        return [
            "ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", *host_keys,
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", *batch_options,
            f"{self.user}@{self.host}", command,
        ]  # fmt: skip

    def run(self, command: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `command` as the ssh session command, `stdin` fed to it (as pulumi-command does); never raises."""
        return self.run_argv((), command, timeout, stdin)

    def run_argv(
        self, options: Sequence[str], command: str, timeout: float = 60, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Like run, with extra ssh client options."""
        argv = self.argv(command, batch_options=tuple(options))
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            return subprocess.CompletedProcess(
                err.cmd, 124, _text(err.stdout), _text(err.stderr) + f"\n(timed out after {timeout:.0f} s)"
            )

    def run_across_restarts(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Like run, but reconnect while sshd is briefly down: cloud-init restarts it (e.g. when it applies
        ssh_pwauth), so a login that just worked can be refused a second later."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            proc = self.run(command, timeout=max(remaining, 1))
            if not is_connection_failure(proc) or time.monotonic() + 2 >= deadline:
                return proc
            time.sleep(2)

    def out(self, command: str, timeout: float = 60) -> str:
        """stdout of a command that must succeed."""
        proc = self.run(command, timeout)
        if proc.returncode != 0:
            raise AssertionError(
                f"`{command}` on {self.host} exited {proc.returncode}\n"
                f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
            )
        return proc.stdout


CONNECTION_FAILURE = re.compile(
    r"Connection refused|Connection reset|Connection closed|kex_exchange_identification|Connection timed out"
)


def is_connection_failure(proc: subprocess.CompletedProcess[str]) -> bool:
    """ssh itself failed to reach sshd (exit 255 with a connection error), as opposed to the command failing."""
    return proc.returncode == 255 and CONNECTION_FAILURE.search(proc.stderr) is not None


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def ssh_banner(host: str, port: int = 22, timeout: float = 5) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = sock.recv(256)
    except OSError:
        return None
    return data.decode(errors="replace").strip() if data.startswith(b"SSH-") else None


@dataclass
class BootWatch:
    """One booting VM: how to reach it, how to see its console, and when it started."""

    name: str
    ssh: Ssh
    serial_log: Path
    started: float  # time.monotonic() just before `virsh start`
    domain_state: Callable[[], str]
    timings: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def _evidence(self) -> str:
        lines = console_cloud_init_lines(self.serial_log)
        parts = [f"domain state: {self.domain_state()}"]
        if lines:
            parts.append("cloud-init on the console:\n  " + "\n  ".join(lines))
        parts.append(f"serial console tail ({self.serial_log}):\n{console_tail(self.serial_log)}")
        return "\n".join(parts)

    def _check_alive(self) -> None:
        state = self.domain_state()
        if not state.startswith("running"):
            raise BootFailure(f"{self.name}: domain is no longer running ({state})\n{self._evidence()}")

    def wait_for_banner(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if ssh_banner(self.ssh.host) is not None:
                self.timings["ssh_banner_seconds"] = self.elapsed()
                return self.timings["ssh_banner_seconds"]
            time.sleep(1)
        raise BootFailure(
            f"{self.name}: no SSH banner from {self.ssh.host}:22 within {timeout:.0f} s of start\n{self._evidence()}"
        )

    def wait_for_login(self, timeout: float) -> float:
        """sshd can answer before cloud-init has created the user and installed its key: retry a while."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            proc = self.ssh.run("true", timeout=30)
            if proc.returncode == 0:
                self.timings["ssh_login_seconds"] = self.elapsed()
                return self.timings["ssh_login_seconds"]
            last = proc.stderr.strip()
            time.sleep(2)
        raise BootFailure(
            f"{self.name}: SSH as {self.ssh.user}@{self.ssh.host} with the stack key still fails {timeout:.0f} s "
            f"after the banner ({last}); cloud-init may not have created the user or installed the key\n"
            f"{self._evidence()}"
        )

    def wait_for_cloud_init(self, timeout: float) -> str:
        """Block on `cloud-init status --wait --long`; raise CloudInitError with its error lines on failure."""
        proc = self.ssh.run_across_restarts("cloud-init status --wait --long", timeout=timeout)
        status, detail = parse_status(proc.stdout)
        self.timings["cloud_init_finished_seconds"] = self.elapsed()
        if proc.returncode == 124:
            raise BootFailure(
                f"{self.name}: cloud-init still running after {timeout:.0f} s (last status: {status or 'unknown'})\n"
                f"{self._evidence()}"
            )
        if status == "done" and proc.returncode == 0:
            self.timings["cloud_init_done_seconds"] = self.timings["cloud_init_finished_seconds"]
            return proc.stdout
        output_tail = self.ssh.run_across_restarts("sudo tail -n 15 /var/log/cloud-init-output.log", 60).stdout.rstrip()
        reason = "; ".join(detail) or proc.stderr.strip() or f"exit {proc.returncode}"
        raise CloudInitError(
            f"cloud-init status: {status or 'unknown'}: {reason}\n"
            f"cloud-init-output.log tail:\n{output_tail}\n"
            f"(cloud-init status exit {proc.returncode}, {self.elapsed()} s after start)"
        )

    def wait_ready(
        self, banner_timeout: float = 420, login_timeout: float = 180, cloud_init_timeout: float = 600
    ) -> None:
        self.wait_for_banner(banner_timeout)
        self.wait_for_login(login_timeout)
        self.wait_for_cloud_init(cloud_init_timeout)


def parse_status(output: str) -> tuple[str, list[str]]:
    """("done" | "error" | "running" | ..., detail lines) from `cloud-init status --long` output."""
    status = ""
    detail: list[str] = []
    in_detail = False
    for raw in output.splitlines():
        line = raw.strip().lstrip(".").strip()  # --wait prints progress dots before the status
        if line.startswith("status:"):
            status = line.split(":", 1)[1].strip()
        elif line.startswith(("time:", "boot_status_code:", "last_update:", "extended_status:")):
            continue
        elif line.startswith(("detail:", "errors:", "recoverable_errors:")):
            in_detail = True
            rest = line.split(":", 1)[1].strip()
            if rest and rest not in ("[]", "{}"):
                detail.append(rest)
        elif in_detail and line:
            detail.append(line)
    return status, detail
