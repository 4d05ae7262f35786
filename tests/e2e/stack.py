"""The real thing: the toolchain's `pulumi` CLI, the registered plugins and the Python language host run
the program on the `e2e` stack, exactly as `make up` would, with a local file backend.

The run works in build/e2e/: a project directory whose program files are links to this checkout
(Pulumi.yaml and Pulumi.e2e.yaml are copied, so `pulumi config set` and the stack's encryption salt
never touch the committed files), the state, the logs of every command with its engine event log,
and the report. Every `pulumi` command's wall time and exit status is recorded for the report.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools import toolchain

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "e2e"
STACK = "e2e"
PROGRAM_FILES = ("__main__.py", "components", "templates", "requirements.txt", ".venv")


@dataclass
class CommandRecord:
    name: str
    args: list[str]
    seconds: float
    returncode: int | None  # None: killed on purpose
    log: str
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class E2EStack:
    home: Path  # the toolchain
    root: Path = BUILD
    records: list[CommandRecord] = field(default_factory=list)

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def host_key_dir(self) -> Path:
        return self.root / "host-keys"

    def env(self) -> dict[str, str]:
        state = self.root / "state"
        return {
            **os.environ,
            "PATH": f"{self.home / 'bin'}:{os.environ['PATH']}",
            "PULUMI_HOME": str(self.home / "pulumi-home"),
            "PULUMI_BACKEND_URL": f"file://{state}",
            "PULUMI_CONFIG_PASSPHRASE_FILE": str(state / "passphrase"),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            # Unhides --event-log: the engine's own step timings, read by the report and the asserts.
            "PULUMI_DEBUG_COMMANDS": "true",
        }

    def prepare(self, image: Path) -> None:
        """A fresh project, state and key; then the stack, pointed at the offline node image."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.project.mkdir(parents=True)
        self.logs.mkdir()
        (self.root / "state").mkdir()
        (self.root / "state" / "passphrase").write_text(secrets.token_hex(16) + "\n")
        for name in ("Pulumi.yaml", f"Pulumi.{STACK}.yaml"):
            shutil.copy(REPO / name, self.project / name)
        for name in PROGRAM_FILES:
            (self.project / name).symlink_to(REPO / name)
        self.ssh_key.parent.mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh_key)], check=True)
        self.pulumi("stack-init", "stack", "init", STACK)
        self.set_config("imageSource", str(image))
        self.set_config("sshKeyPath", str(self.ssh_key))
        self.set_config("hostKeyDir", str(self.host_key_dir))

    def set_config(self, key: str, value: str) -> None:
        self.pulumi(f"config-{key}", "config", "set", f"kube-on-air:{key}", value)

    def _start(self, name: str, args: list[str]) -> tuple[subprocess.Popen[str], Path, Path]:
        number = len(self.records) + 1
        log = self.logs / f"{number:02d}-{name}.log"
        events = self.logs / f"{number:02d}-{name}.events.jsonl"
        stack = [] if args[:2] == ["stack", "init"] else ["--stack", STACK]
        full = [str(self.home / "bin" / "pulumi"), *args, *stack, "--non-interactive"]
        if args[0] in ("up", "preview", "destroy", "refresh"):
            full += ["--event-log", str(events)]
        handle = log.open("w")
        proc = subprocess.Popen(
            full,
            cwd=self.project,
            env=self.env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        handle.close()
        return proc, log, events

    def _record(
        self, name: str, args: list[str], started: float, code: int | None, log: Path, events: Path
    ) -> CommandRecord:
        record = CommandRecord(name, args, round(time.monotonic() - started, 1), code, str(log), read_events(events))
        self.records.append(record)
        return record

    def pulumi(self, name: str, *args: str, timeout: float = 3600, check: bool = True) -> CommandRecord:
        started = time.monotonic()
        proc, log, events = self._start(name, list(args))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        record = self._record(name, list(args), started, code, log, events)
        if check and code != 0:
            raise AssertionError(f"pulumi {' '.join(args)} exited {code}; last lines of {log}:\n{tail(log)}")
        return record

    def pulumi_killed_when(
        self, name: str, args: list[str], ready: Callable[[Path], bool], timeout: float
    ) -> CommandRecord:
        """Run pulumi and kill its whole process group (CLI, language host, plugins) once `ready(events)`."""
        started = time.monotonic()
        proc, log, events = self._start(name, args)
        deadline = started + timeout
        while proc.poll() is None and not ready(events):
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return self._record(name, args, started, None if killed else proc.returncode, log, events)

    def output(self, name: str, secret: bool = False) -> Any:
        return self.cli_json("stack", "output", name, "--json", *(["--show-secrets"] if secret else []))

    def cli_json(self, *args: str) -> Any:
        """What a read-only pulumi command prints, as JSON (not recorded: it changes nothing)."""
        done = subprocess.run(
            [str(self.home / "bin" / "pulumi"), *args, "--stack", STACK],
            cwd=self.project,
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout)

    def pending_operations(self) -> list[tuple[str, str]]:
        """(type, URN) of every operation the state says was under way when a run stopped."""
        state = self.cli_json("stack", "export")
        return [(op["type"], op["resource"]["urn"]) for op in state["deployment"].get("pending_operations") or []]

    def write_kubeconfig(self) -> Path:
        self.kubeconfig.write_text(self.output("kubeconfig", secret=True))
        self.kubeconfig.chmod(0o600)
        return self.kubeconfig

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = subprocess.run(
            [str(self.home / "bin" / "kubectl"), "--kubeconfig", str(self.kubeconfig), "--request-timeout=60s", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def resources(self) -> list[dict[str, Any]]:
        done = subprocess.run(
            [str(self.home / "bin" / "pulumi"), "stack", "export", "--stack", STACK],
            cwd=self.project,
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        deployment = json.loads(done.stdout)["deployment"]
        return list(deployment.get("resources") or [])


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the last line of a killed run may be cut short
    return events


def tail(path: Path, lines: int = 40) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])


def changes(record: CommandRecord) -> dict[str, int]:
    """The summary of an up/preview: operation -> count, from the engine's summary event."""
    for event in reversed(record.events):
        summary = event.get("summaryEvent")
        if summary:
            return {op: int(n) for op, n in (summary.get("resourceChanges") or {}).items()}
    return {}


def step_times(record: CommandRecord) -> dict[tuple[str, str], tuple[float, float]]:
    """(urn, op) -> (start, end) epoch seconds of every step the engine ran, from its event log."""
    started: dict[tuple[str, str], float] = {}
    spans: dict[tuple[str, str], tuple[float, float]] = {}
    for event in record.events:
        stamp = float(event.get("timestamp", 0))
        pre = event.get("resourcePreEvent")
        done = event.get("resOutputsEvent")
        for body, is_start in ((pre, True), (done, False)):
            if not body:
                continue
            metadata = body.get("metadata") or {}
            key = (str(metadata.get("urn")), str(metadata.get("op")))
            if is_start:
                started[key] = stamp
            elif key in started:
                spans[key] = (started[key], stamp)
    return spans


def toolchain_home() -> Path:
    return (toolchain.CACHE / "current").resolve()


# kube-apiserver's own cut of a request (34 s for a create), which the Kubernetes provider does not
# retry: under emulation a busy API server gives it now and then, and the docs say to run `up` again.
API_SERVER_CUT = "request did not complete within requested timeout"


def api_server_cuts(record: CommandRecord) -> list[str]:
    """The errors of a failed pulumi command that are the API server's cut of a request."""
    if record.returncode == 0:
        return []
    lines = Path(record.log).read_text(errors="replace").splitlines()
    return sorted({line.strip()[:400] for line in lines if API_SERVER_CUT in line and "error:" in line})
