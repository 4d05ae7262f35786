"""A node's cloud-init seed: a NoCloud ISO built on the Pulumi host, uploaded as a plain libvirt volume.

Not the provider's CloudInitDisk: terraform-provider-libvirt v0.8.1 reads a CloudInitDisk back by
downloading its ISO over the provider's one libvirt connection (resourceCloudInitDiskRead, after every
create and on every refresh), and go-libvirt's stream download can leave that connection deadlocked
(its router blocked handing a packet to the finished download). Here a real first `up` and a real
`up --refresh` each hung there until the provider's 20-minute deadline. A Volume with a `source` is
uploaded once, at create, and read back from its XML only.

The ISO lives in `hostKeyDir/seeds/` (it carries the node's private host key, like that directory),
under the seed volume's name, built from the three files in the directory beside it. Its path is all
the Pulumi state records, so two evaluations give the same input; the ISO is built again only when a
file's text changed (a template of a newer kube-on-air), or when it is missing. Seeds of earlier
generations stay (a few hundred KiB each): evaluations of other configs, previews included, share them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from components.config import ClusterConfig

# The files cloud-init's NoCloud datasource reads, found by the volume label.
FILES = ("user-data", "meta-data", "network-config")
LABEL = "cidata"
# Any one of these builds the ISO; genisoimage and xorrisofs take mkisofs' options.
ISO_TOOLS = ("genisoimage", "mkisofs", "xorrisofs")
ISO_SUFFIX = ".iso"


class SeedBuildError(RuntimeError):
    pass


def directory(config: ClusterConfig) -> Path:
    return Path(config.host_key_dir) / "seeds"


def iso_tool() -> str | None:
    return next((path for path in map(shutil.which, ISO_TOOLS) if path), None)


def _write_private(path: Path, text: str) -> bool:
    """Write `text` (mode 0600) unless the file already holds it; True if it was written."""
    if path.exists() and path.read_text() == text:
        return False
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return True


def _build_iso(tool: str, files: Path, iso: Path) -> None:
    partial = iso.with_name(iso.name + ".partial")
    sources = [str(files / name) for name in FILES]
    # Rock Ridge and Joliet keep the lower-case names cloud-init looks for, under every ISO reader.
    command = [tool, "-output", str(partial), "-volid", LABEL, "-joliet", "-rock", *sources]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SeedBuildError(f"{Path(tool).name} could not build {iso}: {result.stderr.strip()[-500:]}")
    partial.chmod(0o600)
    partial.replace(iso)


def write_iso(seeds: Path, volume_name: str, texts: Mapping[str, str]) -> Path:
    """`seeds/<volume_name>`, holding exactly `texts` (file name -> text, the names of FILES)."""
    if sorted(texts) != sorted(FILES):
        raise ValueError(f"a seed needs exactly {FILES}, got {sorted(texts)}")
    files = seeds / volume_name.removesuffix(ISO_SUFFIX)
    files.mkdir(mode=0o700, parents=True, exist_ok=True)
    seeds.chmod(0o700)
    changed = [_write_private(files / name, texts[name]) for name in FILES]
    iso = seeds / volume_name
    if any(changed) or not iso.exists():
        tool = iso_tool()
        if tool is None:
            raise SeedBuildError(f"none of {', '.join(ISO_TOOLS)} is on PATH to build {iso}")
        _build_iso(tool, files, iso)
    return iso
