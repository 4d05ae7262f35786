"""The pieces an offline host takes from a directory: `make plugins` and the image check of `make image`.

Four pieces cannot come from the Go module proxy: the libvirt and command provider plugins, the
Python language host and the container images of the CNI and the workloads. A connected host gets
them from `pulumi plugin install` and a registry; an offline one from a directory its user fills
(docs/offline.md). This module checks what such a directory holds against the versions the
program pins, and registers the plugins into the toolchain's PULUMI_HOME, so `pulumi up` never
downloads a plugin.

    python -m tools.offline plugins DIR     check and register the plugins in DIR
    python -m tools.offline images STACK    the image references STACK's nodes need, one a line
    python -m tools.offline status [STACK]  what a real `up` of STACK lacks, one line, exit 1 if anything
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tools import toolchain

ROOT = toolchain.ROOT
OFFLINE = Path(os.environ.get("KOA_OFFLINE_DIR", Path.home() / ".cache" / "kube-on-air" / "offline"))
DEFAULT_PLUGIN_DIR = OFFLINE / "plugins"
DEFAULT_IMAGE_DIR = OFFLINE / "images"
LANGUAGE_HOST = "pulumi-language-python"
# The language host runs the program through this shim, which it looks for beside itself.
LANGUAGE_HOST_EXEC = "pulumi-language-python-exec"


def sdk_pins() -> dict[str, str]:
    """Package -> version of every `==` pin in requirements.txt: the plugins must match the SDKs."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


@dataclass(frozen=True)
class Plugin:
    name: str  # as in `pulumi plugin install resource NAME`
    version: str

    @property
    def binary(self) -> str:
        return f"pulumi-resource-{self.name}"

    def connected_hint(self) -> str:
        """How a connected host gets the binary to copy into the directory."""
        return (
            f"on a connected host: pulumi plugin install resource {self.name} {self.version}, then copy "
            f"~/.pulumi/plugins/resource-{self.name}-v{self.version}/{self.binary}"
        )


def offline_plugins() -> list[Plugin]:
    pins = sdk_pins()
    return [Plugin("libvirt", pins["pulumi-libvirt"]), Plugin("command", pins["pulumi-command"])]


def schema_version(home: Path, binary: Path) -> str | None:
    """The version the plugin's own schema declares (`pulumi package get-schema`), None if it does not answer."""
    done = subprocess.run(
        [str(home / "bin" / "pulumi"), "package", "get-schema", str(binary)],
        env=toolchain.pulumi_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return None
    version = json.loads(done.stdout).get("version")
    return str(version).removeprefix("v") if version else None


def language_host_version(binary: Path) -> str | None:
    done = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.fullmatch(r"v?(\d+\.\d+\.\d+)\S*", done.stdout.strip())
    return match.group(1) if done.returncode == 0 and match else None


def language_host_problem(directory: Path) -> str | None:
    """The language host must be Pulumi v3 and not newer than the CLI that starts it."""
    host, shim = directory / LANGUAGE_HOST, directory / LANGUAGE_HOST_EXEC
    cli_version = toolchain.PULUMI_VERSION
    hint = f"a connected host has both beside the Pulumi CLI (~/.pulumi/bin), version {cli_version}"
    if not host.is_file() or not shim.is_file():
        return f"{LANGUAGE_HOST} and {LANGUAGE_HOST_EXEC} (the Python language host): {hint}"
    version = language_host_version(host)
    cli = tuple(int(n) for n in cli_version.split("."))
    if version is None or version.split(".")[0] != "3" or tuple(int(n) for n in version.split(".")) > cli:
        return f"{LANGUAGE_HOST} {version or '(no -version answer)'}: want v3.x up to v{cli_version}; {hint}"
    return None


def plugin_problem(home: Path, directory: Path, plugin: Plugin) -> str | None:
    binary = directory / plugin.binary
    if not binary.is_file():
        return f"{plugin.binary} {plugin.version}: {plugin.connected_hint()}"
    found = schema_version(home, binary)
    if found != plugin.version:
        return f"{plugin.binary} is {found or 'without a schema'}, want {plugin.version}: {plugin.connected_hint()}"
    return None


def register_plugins(home: Path, directory: Path) -> list[str]:
    """Register every plugin of `directory` that is right; return one problem per piece that is not."""
    if not (home / "bin" / "pulumi").exists():
        return [f"no Pulumi CLI in the toolchain at {home}: run make toolchain first"]
    problems = []
    for plugin in offline_plugins():
        problem = plugin_problem(home, directory, plugin)
        if problem:
            problems.append(problem)
        elif not toolchain.plugin_registered(home, plugin.name, plugin.version):
            toolchain.register_plugin(home, plugin.name, plugin.version, directory / plugin.binary)
    problem = language_host_problem(directory)
    if problem:
        problems.append(problem)
    else:
        for name in (LANGUAGE_HOST, LANGUAGE_HOST_EXEC):
            install_beside(directory / name, cli_directory(home) / name)
            # A copy on PATH makes the engine warn "using pulumi-language-python from $PATH".
            (home / "bin" / name).unlink(missing_ok=True)
    return problems


def install_beside(source: Path, target: Path) -> None:
    """Copy by rename: a host some `pulumi` runs right now cannot be written over ("Text file busy")."""
    if target.exists() and target.read_bytes() == source.read_bytes():
        return
    staging = target.with_name(f".{target.name}.new")
    shutil.copy2(source, staging)
    staging.replace(target)


def cli_directory(home: Path) -> Path:
    """Where the CLI really is (bin/pulumi is a link): the engine takes the Python language host,
    which Pulumi bundles, from beside it, and the host takes its -exec shim from beside itself."""
    return (home / "bin" / "pulumi").resolve().parent


def registered_problems(home: Path) -> list[str]:
    """What the toolchain at `home` still lacks for a real `pulumi up`, one line a piece."""
    lacking = [f"{name} (run make toolchain)" for name in ("pulumi", "kubeadm") if not (home / "bin" / name).exists()]
    plugins = [(p, "make plugins") for p in offline_plugins()]
    plugins.append((Plugin("kubernetes", toolchain.KUBERNETES_PROVIDER[0]), "make toolchain"))
    lacking += [
        f"plugin {p.name} {p.version} ({how})"
        for p, how in plugins
        if not toolchain.plugin_registered(home, p.name, p.version)
    ]
    hosts = (LANGUAGE_HOST, LANGUAGE_HOST_EXEC)
    lacking += [f"{name} (make plugins)" for name in hosts if not (cli_directory(home) / name).exists()]
    return lacking


def archive_refs(archive: Path) -> list[str]:
    """The references a docker-archive carries (its manifest.json's RepoTags)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        manifest = json.load(member) if member else []
    return [str(tag) for entry in manifest for tag in entry.get("RepoTags") or []]


def missing_images(home: Path, stack: str, image_dir: Path) -> list[str]:
    """Images STACK runs that neither the toolchain's archives nor IMAGE_DIR's carry."""
    listed = home / "pieces" / "images" / "images.txt"
    lines = listed.read_text().splitlines() if listed.exists() else []
    offered = {line.split()[0] for line in lines if line.strip()}
    for archive in sorted(image_dir.glob("*.tar")) if image_dir.is_dir() else []:
        offered.update(archive_refs(archive))
    return [ref for ref in stack_images(stack) if ref not in offered]


def stack_images(stack: str) -> list[str]:
    """Every image the workloads, add-ons and CNI of STACK run, as the manifests name them (kubeadm's are its own)."""
    from components import cni, localpath, metallb, metricsserver, workloads
    from components.config import settings as config

    values = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()).get("config") or {}

    def setting(key: str) -> str:
        value = values.get(f"{config.NAMESPACE}:{key}")
        return config.DEFAULTS[key] if value is None else value if isinstance(value, str) else json.dumps(value)

    chosen = json.loads(setting("workloads"))
    chosen_addons = json.loads(setting("addons"))
    addons = [
        *(localpath.images() if "local-path" in chosen_addons else ()),
        *(metricsserver.images() if "metrics-server" in chosen_addons else ()),
        *(metallb.images() if "metallb" in chosen_addons else ()),
    ]
    return sorted({*cni.images(setting("cni")), *workloads.images(tuple(chosen)), *addons})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="check and register the plugins in DIR")
    plugins.add_argument("directory", type=Path, nargs="?", default=DEFAULT_PLUGIN_DIR)
    images = sub.add_parser("images", help="the image references STACK needs")
    images.add_argument("stack")
    status = sub.add_parser("status", help="what is missing for a real pulumi up of STACK")
    status.add_argument("stack", nargs="?", default="e2e")
    status.add_argument("--image-dir", type=Path, default=DEFAULT_IMAGE_DIR)
    args = parser.parse_args(argv)
    home = (toolchain.CACHE / "current").resolve()
    if args.command == "images":
        print("\n".join(stack_images(args.stack)))
        return 0
    if args.command == "status":
        lacking = registered_problems(home)
        absent = missing_images(home, args.stack, args.image_dir)
        lacking += [f"image {ref} (IMAGE_DIR {args.image_dir})" for ref in absent]
        if lacking:
            print(f"missing for a real pulumi up: {'; '.join(lacking)}")
            return 1
        return 0
    problems = register_plugins(home, args.directory.expanduser().resolve())
    for problem in problems:
        print(f"[plugins] missing in {args.directory}: {problem}")
    if not problems:
        print(f"[plugins] registered from {args.directory} into {home / 'pulumi-home'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
