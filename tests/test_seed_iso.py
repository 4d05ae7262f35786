"""The seed ISO the program builds (components/artifacts/seed.py), read back by a pure-Python ISO 9660 reader.

cloud-init's NoCloud finds the seed by its label and reads the files by fixed lower-case names, which
must hold under every naming a reader may use (Rock Ridge, Joliet). Level 2 (a node booting from it)
is tests/vm; here: what goes in comes out, whichever tool builds it, and what it carries stays private.
"""

from __future__ import annotations

import shutil
import stat
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pycdlib
import pytest

from components.artifacts import seed
from tests.seeds import read_iso

TEXTS = {
    "user-data": "#cloud-config\nhostname: head10\n",
    "meta-data": "instance-id: t-head10-0123456789\nlocal-hostname: head10\n",
    "network-config": "version: 2\nethernets: {}\n",
}
NAME = "head10-cidata-0123456789.iso"


def joliet_names(iso_path: Path) -> list[str]:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        children = iso.list_children(joliet_path="/")
        return sorted(c.file_identifier().decode("utf-16-be") for c in children if not (c.is_dot() or c.is_dotdot()))
    finally:
        iso.close()


def only_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tool: str) -> None:
    """PATH holding nothing but `tool` (under its own name), as on a host with only that package."""
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (apt-get install {'xorriso' if tool == 'xorrisofs' else tool})")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))


@pytest.mark.parametrize("tool", seed.ISO_TOOLS)
def test_each_tool_builds_a_seed_cloud_init_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str) -> None:
    only_tool(monkeypatch, tmp_path, tool)
    iso = seed.write_iso(tmp_path / "seeds", NAME, TEXTS)
    assert iso == tmp_path / "seeds" / NAME
    assert read_iso(iso) == TEXTS  # the label too (read_iso checks it)
    assert joliet_names(iso) == sorted(TEXTS)


def test_without_any_tool_the_error_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(seed.SeedBuildError, match="genisoimage, mkisofs, xorrisofs"):
        seed.write_iso(tmp_path / "seeds", NAME, TEXTS)


def test_the_seed_and_its_files_are_private(tmp_path: Path) -> None:
    # user-data carries the node's private host key.
    seeds = tmp_path / "seeds"
    iso = seed.write_iso(seeds, NAME, TEXTS)
    assert stat.S_IMODE(seeds.stat().st_mode) == 0o700
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600
    for path in (seeds / NAME.removesuffix(".iso")).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.name for p in seeds.iterdir()) == [NAME.removesuffix(".iso"), NAME], "scratch left behind"


def test_built_again_only_when_a_file_changed_or_the_iso_is_gone(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    first = seed.write_iso(seeds, NAME, TEXTS).stat()
    again = seed.write_iso(seeds, NAME, TEXTS).stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns), "rebuilt with nothing changed"
    newer = {**TEXTS, "meta-data": "instance-id: t-head10-9876543210\nlocal-hostname: head10\n"}
    iso = seed.write_iso(seeds, NAME, newer)
    assert iso.stat().st_ino != first.st_ino and read_iso(iso) == newer
    iso.unlink()
    assert read_iso(seed.write_iso(seeds, NAME, newer)) == newer


def test_a_seed_needs_exactly_the_three_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="network-config"):
        seed.write_iso(tmp_path, NAME, {"user-data": "", "meta-data": ""})


def write_at(start: float, seeds: Path) -> Path:
    time.sleep(max(0.0, start - time.time()))  # all at once, not one after another
    return seed.write_iso(seeds, NAME, TEXTS)


def test_evaluations_side_by_side_build_the_same_seed_safely(tmp_path: Path) -> None:
    # make test's parallel evaluations share one hostKeyDir (a shared partial file broke them), as a
    # preview beside an up of the same stack would.
    seeds = tmp_path / "seeds"
    with ProcessPoolExecutor(max_workers=4) as pool:
        start = time.time() + 1
        built = list(pool.map(write_at, [start] * 8, [seeds] * 8))
    assert set(built) == {seeds / NAME}
    assert read_iso(seeds / NAME) == TEXTS
    assert sorted(p.name for p in seeds.iterdir()) == [NAME.removesuffix(".iso"), NAME]
