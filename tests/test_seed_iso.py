"""The preflight's mkisofs advice (link genisoimage or xorrisofs as mkisofs) keeps the seed readable.

terraform-provider-libvirt v0.8.1 (libvirt/cloudinit_def.go) builds the cloud-init disk with exactly
`mkisofs -output <iso> -volid cidata -joliet -rock user-data meta-data network-config` and, on
refresh, reads the ISO back and takes the files by those fixed names. Here both tools the advice may
link build the ISO that way, and a pure-Python ISO 9660 reader (pycdlib) reads it back: the names
must be the same under every naming an ISO 9660 reader may use (plain ISO 9660, Joliet, Rock Ridge),
and the files must hold what went in.
"""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import pycdlib
import pytest

SEED = {
    "user-data": "#cloud-config\nhostname: head10\n",
    "meta-data": "instance-id: t-head10-0123456789\nlocal-hostname: head10\n",
    "network-config": "version: 2\nethernets: {}\n",
}
TOOLS = ("genisoimage", "xorrisofs")


def provider_iso(tool: str, directory: Path) -> Path:
    """The seed ISO as the provider's mkisofs call makes it, with `tool` linked in as mkisofs."""
    directory.mkdir()
    for name, text in SEED.items():
        (directory / name).write_text(text)
    (directory / "mkisofs").symlink_to(shutil.which(tool) or tool)
    iso = directory / "seed.iso"
    files = [str(directory / name) for name in SEED]
    command = [str(directory / "mkisofs"), "-output", str(iso), "-volid", "cidata", "-joliet", "-rock", *files]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return iso


def read_back(iso_path: Path) -> dict[str, object]:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        children = [c for c in iso.list_children(iso_path="/") if not (c.is_dot() or c.is_dotdot())]
        contents = {}
        for name in SEED:
            out = BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            contents[name] = out.getvalue().decode()
        return {
            "volume": iso.pvd.volume_identifier.decode().strip(),
            "iso9660": sorted(c.file_identifier().decode() for c in children),
            "rock-ridge": sorted(c.rock_ridge.name().decode() for c in children if c.rock_ridge),
            "joliet": sorted(
                c.file_identifier().decode("utf-16-be")
                for c in iso.list_children(joliet_path="/")
                if not (c.is_dot() or c.is_dotdot())
            ),
            "contents": contents,
        }
    finally:
        iso.close()


# Not among make test's system dependencies (tests/test_makefile.py pins that list): apt-get install
# genisoimage xorriso to run it.
@pytest.mark.skipif(any(shutil.which(tool) is None for tool in TOOLS), reason="apt-get install genisoimage xorriso")
def test_xorrisofs_as_mkisofs_reads_back_like_genisoimage(tmp_path: Path) -> None:
    seen = {tool: read_back(provider_iso(tool, tmp_path / tool)) for tool in TOOLS}
    assert seen["xorrisofs"] == seen["genisoimage"]
    reference = seen["genisoimage"]
    assert reference["volume"] == "cidata", "cloud-init's NoCloud finds the seed by this label"
    assert reference["rock-ridge"] == reference["joliet"] == sorted(SEED)
    assert reference["iso9660"] == ["META_DAT.;1", "NETWORK_.;1", "USER_DAT.;1"], "the same 8.3 names from both"
    assert reference["contents"] == SEED
