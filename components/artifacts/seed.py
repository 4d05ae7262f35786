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
import tempfile
from collections.abc import Mapping
from pathlib import Path

from components.config.settings import ClusterConfig

# The files cloud-init's NoCloud datasource reads, found by the volume label.
FILES = ("user-data", "meta-data", "network-config")
LABEL = "cidata"
# Any one of these builds the ISO; genisoimage and xorrisofs take mkisofs' options.
ISO_TOOLS = ("genisoimage", "mkisofs", "xorrisofs")
ISO_SUFFIX = ".iso"
NO_TOOL = f"none of {', '.join(ISO_TOOLS)} is on PATH"


class SeedBuildError(RuntimeError):
    pass


def directory(config: ClusterConfig) -> Path:
    return Path(config.host_key_dir) / "seeds"


def files_beside(iso: Path) -> Path:
    """The directory holding the files `iso` was built from."""
    return iso.with_name(iso.name.removesuffix(ISO_SUFFIX))


def iso_tool() -> str | None:
    return next((path for path in map(shutil.which, ISO_TOOLS) if path), None)


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _build_iso(tool: str, files: Path, iso: Path) -> None:
    sources = [str(files / name) for name in FILES]
    # Rock Ridge and Joliet keep the lower-case names cloud-init looks for, under every ISO reader.
    command = [tool, "-output", str(iso), "-volid", LABEL, "-joliet", "-rock", *sources]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise SeedBuildError(f"{Path(tool).name} could not build {iso.name}: {result.stderr.strip()[-500:]}")
    iso.chmod(0o600)


def _is_current(iso: Path, files: Path, texts: Mapping[str, str]) -> bool:
    return iso.exists() and all(
        (files / name).is_file() and (files / name).read_text() == texts[name] for name in FILES
    )


def write_iso(seeds: Path, volume_name: str, texts: Mapping[str, str]) -> Path:
    """`seeds/<volume_name>`, holding exactly `texts` (file name -> text, the names of FILES).

    Built in a private scratch directory and renamed into place, so evaluations running side by side
    (a preview beside an up, parallel tests) never read a half-written seed."""
    if sorted(texts) != sorted(FILES):
        raise ValueError(f"a seed needs exactly {FILES}, got {sorted(texts)}")
    iso = seeds / volume_name
    files = files_beside(iso)
    if _is_current(iso, files, texts):
        return iso
    tool = iso_tool()
    if tool is None:
        raise SeedBuildError(f"{NO_TOOL} to build {iso}")
    seeds.mkdir(mode=0o700, parents=True, exist_ok=True)
    seeds.chmod(0o700)
    files.mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=seeds, prefix=".build-") as scratch:
        built = Path(scratch)
        for name in FILES:
            _write_private(built / name, texts[name])
        _build_iso(tool, built, built / volume_name)
        (built / volume_name).replace(iso)
        for name in FILES:
            (built / name).replace(files / name)
    return iso
