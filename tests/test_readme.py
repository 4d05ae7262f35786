"""The README renders as written (every table whole, read by a Markdown parser) and its config table
states the ranges the program enforces."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from components.config import settings as cfg
from tools.dryrun import ROOT

README = ROOT / "README.md"
# A cell boundary: a pipe not escaped with a backslash (GFM splits on pipes inside code spans too).
CELL_BOUNDARY = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Table:
    first_line: int  # 0-based line of the header row
    source: list[str]  # the table's lines as written: header, delimiter, body rows
    rows: list[list[str]]  # the parsed rows, header first, each as its cells' text


def parse(text: str) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").parse(text)


def tables(text: str) -> list[Table]:
    tokens, lines = parse(text), text.splitlines()
    found: list[Table] = []
    for i, token in enumerate(tokens):
        if token.type != "table_open" or token.map is None:
            continue
        start, end = token.map
        rows: list[list[str]] = []
        for inner in tokens[i + 1 :]:
            if inner.type == "table_close":
                break
            if inner.type == "tr_open":
                rows.append([])
            elif inner.type == "inline":
                rows[-1].append(inner.content)
        found.append(Table(start, lines[start:end], rows))
    return found


def code_lines(text: str) -> set[int]:
    """Lines inside fenced or indented code, where a leading pipe is not a table row."""
    lines: set[int] = set()
    for token in parse(text):
        if token.type in ("fence", "code_block") and token.map:
            lines.update(range(*token.map))
    return lines


def cells(row: str) -> int:
    return len(CELL_BOUNDARY.split(row.strip().removeprefix("|").removesuffix("|")))


def test_every_pipe_row_belongs_to_a_table() -> None:
    text = README.read_text()
    in_tables = {t.first_line + n for t in tables(text) for n in range(len(t.source))}
    stray = [
        f"line {n + 1}: {line[:60]}"
        for n, line in enumerate(text.splitlines())
        if line.lstrip().startswith("|") and n not in in_tables and n not in code_lines(text)
    ]
    assert not stray, "rows the parser does not read as part of a table (a blank line inside one?):\n" + "\n".join(
        stray
    )


def test_every_table_keeps_all_its_rows_and_cells() -> None:
    found = tables(README.read_text())
    assert len(found) >= 5, "the parser finds the README's tables"
    for table in found:
        where = f"table at line {table.first_line + 1}"
        assert len(table.rows) == len(table.source) - 1, f"{where}: every row but the delimiter is parsed"
        header = len(table.rows[0])
        for offset, row in enumerate(table.source):
            assert cells(row) == header, f"{where}, line {table.first_line + offset + 1}: {cells(row)} cells, {header}"


def test_a_blank_line_inside_a_table_is_caught() -> None:
    broken = "| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n"
    (table,) = tables(broken)
    assert len(table.rows) == 2
    assert 4 not in {table.first_line + n for n in range(len(table.source))}


# ---- the configuration table -----------------------------------------------------------------

RANGE = re.compile(r"(?P<low>\d+)\.\.(?P<high>\d+)|≥ (?P<least>\d+)")


@dataclass(frozen=True)
class ConfigRow:
    keys: list[str]  # a row may name several keys: `controlPlaneId` / `firstWorkerId`
    text: str  # its default and meaning cells

    def stated_range(self, key: str) -> tuple[int, int | None]:
        """The range given for `key`: right after its name in a row of several keys, else the row's first."""
        if len(self.keys) > 1:
            assert f"`{key}`" in self.text, f"the config table row of {self.keys} gives no range for {key}"
        text = self.text.split(f"`{key}`", 1)[1] if len(self.keys) > 1 else self.text
        match = RANGE.search(text)
        assert match, f"the config table gives no range (low..high or ≥ low) for {key}: {self.text}"
        if match["least"]:
            return int(match["least"]), None
        return int(match["low"]), int(match["high"])


def config_rows() -> dict[str, ConfigRow]:
    """Each key of the config table -> its row."""
    (table,) = [t for t in tables(README.read_text()) if t.rows[0][:2] == ["key", "default"]]
    rows: dict[str, ConfigRow] = {}
    for cells_ in table.rows[1:]:
        row = ConfigRow(re.findall(r"`([\w:]+)`", cells_[0]), " | ".join(cells_[1:]))
        rows.update(dict.fromkeys(row.keys, row))
    return rows


def integer_keys() -> list[str]:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    return [k.split(":", 1)[1] for k, v in declared.items() if v["type"] == "integer"]


def accepted(ssh_key: Path, key: str, value: int) -> bool:
    try:
        cfg.load({"sshKeyPath": str(ssh_key), key: str(value)}, "t")
    except cfg.ConfigError as err:
        assert {p.key for p in err.problems} == {key}, err
        return False
    return True


@pytest.mark.parametrize("key", integer_keys())
def test_config_table_states_the_range_the_program_enforces(ssh_key: Path, key: str) -> None:
    low, high = config_rows()[key].stated_range(key)
    assert accepted(ssh_key, key, low) and not accepted(ssh_key, key, low - 1), f"{key}: lowest is {low}"
    if high is not None:
        assert accepted(ssh_key, key, high) and not accepted(ssh_key, key, high + 1), f"{key}: highest is {high}"
