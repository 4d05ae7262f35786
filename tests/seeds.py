"""The seeds a dry run built, read back from their ISO files as cloud-init's NoCloud would see them."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pycdlib

from components.artifacts import seed
from tools.dryrun import Evaluation, Resource

VOLUME = "libvirt:index/volume:Volume"


def seed_volumes(evaluation: Evaluation) -> list[Resource]:
    return [volume for volume in evaluation.of_type(VOLUME) if volume.name.endswith("-seed")]


def read_iso(path: Path) -> dict[str, str]:
    """File name (Rock Ridge, as Linux mounts it) -> text, for every file in the ISO's root; label checked."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        assert label == seed.LABEL, f"{path}: volume label {label!r}; NoCloud looks for {seed.LABEL!r}"
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            out = BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue().decode()
        return files
    finally:
        iso.close()


def seed_of(evaluation: Evaluation, node: str) -> dict[str, str]:
    """The files in `node`'s seed ISO, the one its volume uploads."""
    return read_iso(Path(evaluation.named(f"{node}-seed").plain("source")))
