"""The README's commands: `make test` installs or names its system tools, `make up` sets up a local
backend, a passphrase and a key, then runs Pulumi; `make env` gives your shell the same setup.

The Pulumi CLI cannot be installed here, so a stand-in `pulumi` on PATH records how it is called.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standins import stand_in
from tools.dryrun import ROOT

STACK = "koa-make-test"  # not air: `make kubeconfig` writes build/<stack>/
STAND_IN_PULUMI = """#!/bin/bash
{
  printf 'call: %s\\n' "$*"
  printf '  exe=%s backend=%s passphrase_file=%s skip_update_check=%s home=%s no_plugin_download=%s\\n' "$0" \\
    "${PULUMI_BACKEND_URL:-}" "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" "${PULUMI_SKIP_UPDATE_CHECK:-}" \\
    "${PULUMI_HOME:-}" "${PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION:-}"
} >> "$PULUMI_CALLS"
if [[ -n ${STAND_IN_PULUMI_FAILS:-} ]]; then echo "error: $STAND_IN_PULUMI_FAILS" >&2; exit 255; fi
if [[ "$*" == *"--show-secrets kubeconfig"* ]]; then echo "apiVersion: v1  # stand-in kubeconfig"; fi
"""
SUCCEEDS = "#!/bin/sh\nexit 0\n"
CURL_OFFLINE = "#!/bin/sh\necho 'curl: (6) Could not resolve host: get.pulumi.com' >&2\nexit 6\n"
MAKE = shutil.which("make") or "make"  # by path: some tests run make with a PATH that lacks it


def make_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "PULUMI_"))}
    env["PULUMI_CALLS"] = str(tmp_path / "calls.log")
    return env


def make_variables(tmp_path: Path, **overrides: str | None) -> list[str]:
    """Everything make would keep in your home or the checkout, moved under tmp_path; None drops one."""
    variables: dict[str, str | None] = {
        "STACK": STACK,
        "STATE_DIR": str(tmp_path / "state"),
        "SSH_KEY": str(tmp_path / "ssh" / "id_ed25519"),
        "TOOLCHAIN_DIR": str(tmp_path / "no-toolchain"),
        "PULUMI_BIN": str(tmp_path / "pulumi-bin"),
    }
    return [f"{name}={value}" for name, value in (variables | overrides).items() if value is not None]


def run_make(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, **overrides: str | None
) -> subprocess.CompletedProcess[str]:
    stand_in(tmp_path / "pulumi-bin", "pulumi", STAND_IN_PULUMI)
    return subprocess.run(
        [MAKE, "--no-print-directory", *args, *make_variables(tmp_path, **overrides)],
        cwd=ROOT, env=env or make_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def make(tmp_path: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    done = run_make(tmp_path, *targets)
    assert done.returncode == 0, f"make {' '.join(targets)}:\n{done.stdout}\n{done.stderr}"
    return done


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def env_line(tmp_path: Path, exe: Path, home: str = "", no_plugin_download: str = "") -> str:
    state = tmp_path / "state"
    return (
        f"  exe={exe} backend=file://{state} passphrase_file={state / 'passphrase'} skip_update_check=true"
        f" home={home} no_plugin_download={no_plugin_download}"
    )


@pytest.fixture
def cleanup_build() -> Iterator[Path]:
    yield ROOT / "build" / STACK
    shutil.rmtree(ROOT / "build" / STACK, ignore_errors=True)


def test_make_up_needs_no_account_and_is_repeatable(tmp_path: Path) -> None:
    make(tmp_path, "up")
    state, key = tmp_path / "state", tmp_path / "ssh" / "id_ed25519"
    line = env_line(tmp_path, tmp_path / "pulumi-bin" / "pulumi")
    assert calls(tmp_path) == [f"call: stack select --create {STACK}", line, f"call: up --stack {STACK}", line]
    passphrase = (state / "passphrase").read_text()
    assert len(passphrase.strip()) >= 40 and stat.S_IMODE((state / "passphrase").stat().st_mode) == 0o600
    keygen = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, check=False)
    assert keygen.returncode == 0 and "(ED25519)" in keygen.stdout
    public_key = key.with_suffix(".pub").read_text()

    make(tmp_path, "up")
    assert (state / "passphrase").read_text() == passphrase, "a second run must not lock you out of the state"
    assert key.with_suffix(".pub").read_text() == public_key, "a second run must not replace the nodes' login key"
    assert calls(tmp_path)[-2] == f"call: up --stack {STACK}"


def test_seed_targets_map_to_pulumi(tmp_path: Path, cleanup_build: Path) -> None:
    make(tmp_path, "clean")
    assert f"call: destroy --stack {STACK}" in calls(tmp_path)
    make(tmp_path, "ls")
    assert f"call: stack output --stack {STACK} nodes" in calls(tmp_path)
    done = make(tmp_path, "kubeconfig")
    written = cleanup_build / "kubeconfig"
    assert written.read_text().startswith("apiVersion: v1")
    assert stat.S_IMODE(written.stat().st_mode) == 0o600, "the admin kubeconfig is a secret"
    assert f"export KUBECONFIG={written}" in done.stdout


def test_kubeconfig_is_replaced_only_by_a_complete_one(tmp_path: Path, cleanup_build: Path) -> None:
    env = make_env(tmp_path) | {"STAND_IN_PULUMI_FAILS": "no stack named 'koa-make-test' found"}
    failed = run_make(tmp_path, "kubeconfig", env=env)
    assert failed.returncode != 0 and "no stack named" in failed.stderr
    assert list(cleanup_build.iterdir()) == [], "no empty kubeconfig, no temporary file"

    make(tmp_path, "kubeconfig")
    good = (cleanup_build / "kubeconfig").read_text()
    assert run_make(tmp_path, "kubeconfig", env=env).returncode != 0
    assert [p.name for p in cleanup_build.iterdir()] == ["kubeconfig"]
    assert (cleanup_build / "kubeconfig").read_text() == good, "a failed read must keep the working kubeconfig"


def test_make_env_gives_your_shell_the_pulumi_setup_of_make(tmp_path: Path) -> None:
    make(tmp_path, "stack")
    made_by_make = calls(tmp_path)[1]
    variables = " ".join(make_variables(tmp_path))
    # As the README says: eval the exports in your shell, then run pulumi there (the stand-in is not on PATH).
    script = f'eval "$(make -s env {variables})" && pulumi config set --stack {STACK} kube-on-air:workerCount 2'
    env = make_env(tmp_path)
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert calls(tmp_path)[-2:] == [f"call: config set --stack {STACK} kube-on-air:workerCount 2", made_by_make]


def test_a_built_toolchain_supplies_pulumi_and_its_plugins(tmp_path: Path) -> None:
    versioned = tmp_path / "toolchain" / "v3.200.0"
    stand_in(versioned / "bin", "pulumi", STAND_IN_PULUMI)
    (versioned / "pulumi-home").mkdir()
    current = tmp_path / "toolchain" / "current"
    current.symlink_to(versioned)
    done = run_make(tmp_path, "up", TOOLCHAIN_DIR=str(current), PULUMI_BIN=None)
    assert done.returncode == 0, done.stderr
    line = env_line(tmp_path, current / "bin" / "pulumi", home=str(current / "pulumi-home"), no_plugin_download="true")
    assert calls(tmp_path) == [f"call: stack select --create {STACK}", line, f"call: up --stack {STACK}", line]
    exports = run_make(tmp_path, "-s", "env", TOOLCHAIN_DIR=str(current), PULUMI_BIN=None).stdout
    assert f"export PULUMI_HOME={current / 'pulumi-home'}" in exports.splitlines()
    assert f'export PATH={current / "bin"}:"$PATH"' in exports.splitlines()


def path_without_pulumi(*first: Path) -> str:
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "pulumi").exists()]
    return os.pathsep.join([*(str(d) for d in first), *dirs])


# Every target that runs the Pulumi CLI.
NEEDS_PULUMI = ["stack", "up", "preview", "destroy", "clean", "ls", "kubeconfig"]


@pytest.mark.parametrize("target", NEEDS_PULUMI)
def test_every_pulumi_target_offline_without_pulumi_says_what_to_do(
    tmp_path: Path, cleanup_build: Path, target: str
) -> None:
    unreachable = stand_in(tmp_path / "offline", "curl", CURL_OFFLINE)
    env = make_env(tmp_path) | {"PATH": path_without_pulumi(unreachable.parent)}
    done = run_make(tmp_path, target, env=env, PULUMI_BIN=str(tmp_path / "empty"))
    assert done.returncode != 0 and calls(tmp_path) == []
    ours, makes = done.stderr.splitlines()[-2:]
    assert ours == (
        "no pulumi on PATH and https://get.pulumi.com cannot be reached; install the Pulumi CLI yourself "
        "(https://www.pulumi.com/docs/install/) and put it on PATH, or on an offline host build it with: make toolchain"
    ), done.stderr
    assert makes.startswith("make: *** [") and "pulumi-cli" in makes
    assert "Could not resolve host" not in done.stderr and "command not found" not in done.stderr
    assert not cleanup_build.exists(), "nothing is made before the CLI is there"


def test_make_env_says_what_is_missing_instead_of_exporting_it(tmp_path: Path) -> None:
    state, empty = tmp_path / "state", tmp_path / "empty"
    env = make_env(tmp_path) | {"PATH": path_without_pulumi()}
    neither = run_make(tmp_path, "-s", "env", env=env, PULUMI_BIN=str(empty))
    assert neither.returncode != 0 and neither.stdout == ""
    ours, makes = neither.stderr.splitlines()  # make's own "*** Error" line follows ours; nothing else
    assert ours == (
        f"make env: no pulumi in {empty} or on PATH and no passphrase file {state / 'passphrase'}; "
        "run make stack first (it makes both)"
    )
    assert makes.startswith("make: *** [") and makes.endswith(": env] Error 1")
    make(tmp_path, "stack")
    no_cli = run_make(tmp_path, "-s", "env", env=env, PULUMI_BIN=str(empty))
    assert no_cli.returncode != 0 and no_cli.stdout == ""
    assert no_cli.stderr.startswith(f"make env: no pulumi in {empty} or on PATH; run make stack first")


def test_make_env_exports_no_path_for_a_pulumi_already_on_yours(tmp_path: Path) -> None:
    make(tmp_path, "stack")
    env = make_env(tmp_path) | {"PATH": path_without_pulumi(tmp_path / "pulumi-bin")}
    done = run_make(tmp_path, "-s", "env", env=env, PULUMI_BIN=str(tmp_path / "empty"))
    assert done.returncode == 0, done.stderr
    exports = done.stdout.splitlines()
    assert f"export PULUMI_CONFIG_PASSPHRASE_FILE={tmp_path / 'state' / 'passphrase'}" in exports
    assert not [line for line in exports if line.startswith("export PATH=")], "no PATH to a directory without pulumi"


def help_targets() -> set[str]:
    listed = subprocess.run([MAKE, "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line.split()[1] for line in listed.splitlines()}


def test_help_lists_every_phony_target() -> None:
    # The README says `make help` lists every target.
    makefile = (ROOT / "Makefile").read_text()
    phony = {t for line in re.findall(r"^\.PHONY:(.*)$", makefile, flags=re.MULTILINE) for t in line.split()}
    assert {"up", "deps", "dev-deps"} <= phony, "the Makefile parse found them"
    assert phony <= help_targets(), f"make help does not list: {sorted(phony - help_targets())}"


# ---- `make test`'s dependency step ------------------------------------------------------------

STAND_IN_ID = '#!/bin/sh\necho "$FAKE_UID"\n'
STAND_IN_SUDO = """#!/bin/bash
echo "sudo $*" >> "$APT_LOG"
[[ $1 == -n ]] && shift
if [[ -n $SUDO_OK ]]; then "$@"; else exit 1; fi
"""
# "Installs" every package by dropping a cloud-init stand-in next to itself, as chatty as dpkg is;
# with APT_FAILS set, the install fails as apt does without a mirror.
STAND_IN_APT = """#!/bin/bash
echo "DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-} apt-get $*" >> "$APT_LOG"
echo "Selecting previously unselected package cloud-init."
echo "debconf: delaying package configuration, since apt-utils is not installed" >&2
if [[ " $* " == *" install "* ]]; then
  if [[ -n ${APT_FAILS:-} ]]; then echo "E: Unable to locate package cloud-init" >&2; exit 100; fi
  printf '#!/bin/sh\\nexit 0\\n' > "${0%/*}/cloud-init" && /bin/chmod +x "${0%/*}/cloud-init"
fi
"""


def machine_without_cloud_init(tmp_path: Path, uid: int, sudo_without_password: bool) -> dict[str, str]:
    """A PATH with everything `make test` checks for except cloud-init, and apt/sudo/id stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "mktemp", "rm"):  # coreutils: on every machine
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    for tool in ("ssh-keygen", "virsh", "haproxy", "keepalived"):
        stand_in(bin_dir, tool, SUCCEEDS)
    stand_in(bin_dir, "id", STAND_IN_ID)
    stand_in(bin_dir, "sudo", STAND_IN_SUDO)
    stand_in(bin_dir, "apt-get", STAND_IN_APT)
    (tmp_path / "tmp").mkdir()
    return {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path / "tmp"),
        "FAKE_UID": str(uid),
        "SUDO_OK": "yes" if sudo_without_password else "",
        "APT_LOG": str(tmp_path / "apt.log"),
    }


def apt_log(tmp_path: Path) -> list[str]:
    log = tmp_path / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_dependency_step_stops_with_one_line_naming_packages_and_command(tmp_path: Path) -> None:
    env = machine_without_cloud_init(tmp_path, uid=1000, sudo_without_password=False)
    venv = tmp_path / "venv"
    done = subprocess.run(
        [MAKE, "--no-print-directory", "test", f"VENV={venv}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and done.stdout == ""
    ours, makes = done.stderr.splitlines()  # make's own "*** Error" line follows ours; nothing else
    assert ours == (
        "make test: missing cloud-init and sudo needs a password; install them with: sudo apt-get install cloud-init"
    )
    assert makes.startswith("make: *** [Makefile:") and makes.endswith(": test-deps] Error 1")
    assert not venv.exists(), "nothing may be installed or run before the check passes"
    assert apt_log(tmp_path) == ["sudo -n true"]


@pytest.mark.parametrize("as_root", [True, False], ids=["root", "sudo-without-password"])
def test_dependency_step_installs_missing_tools_with_apt(tmp_path: Path, as_root: bool) -> None:
    env = machine_without_cloud_init(tmp_path, uid=0 if as_root else 1000, sudo_without_password=not as_root)
    first = subprocess.run([MAKE, "-s", "test-deps"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines() == ["make test: installing cloud-init with apt-get"] and first.stdout == ""
    assert list((tmp_path / "tmp").iterdir()) == [], "the apt log of a good install is not kept"
    apt = "DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300"
    apt_calls = [f"{apt} update", f"{apt} install -y --no-install-recommends cloud-init"]
    sudo_calls = [] if as_root else ["sudo -n true"] + [f"sudo -n env {call}" for call in apt_calls]
    log = apt_log(tmp_path)
    assert [line for line in log if line.startswith("DEBIAN_FRONTEND=")] == apt_calls
    assert [line for line in log if line.startswith("sudo ")] == sudo_calls

    again = subprocess.run([MAKE, "-s", "test-deps"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and again.stderr == ""
    assert apt_log(tmp_path) == log, "nothing left to install"


def test_failed_apt_install_is_one_line_naming_its_log(tmp_path: Path) -> None:
    env = machine_without_cloud_init(tmp_path, uid=0, sudo_without_password=False) | {"APT_FAILS": "yes"}
    done = subprocess.run([MAKE, "-s", "test-deps"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0 and done.stdout == ""
    announced, ours, makes = done.stderr.splitlines()
    assert announced == "make test: installing cloud-init with apt-get"
    (log,) = (tmp_path / "tmp").iterdir()
    assert ours == (
        f"make test: apt-get could not install cloud-init (its output: {log}); "
        "install them with: sudo apt-get install cloud-init"
    )
    assert makes.startswith("make: *** [") and makes.endswith(": test-deps] Error 1")
    kept = log.read_text()
    assert "Unable to locate package cloud-init" in kept and "Selecting previously unselected" in kept
