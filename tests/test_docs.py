"""The README and docs/ cannot drift from the code: every table renders whole (read by a Markdown
parser), every relative link and anchor resolves, every `make` target named is one `make help` lists,
every config key named is declared in Pulumi.yaml, every repository path and module named exists, and
the configuration page states each key and the ranges the program enforces."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from components.config import settings as cfg
from tests.test_makefile import help_targets
from tools.dryrun import ROOT

README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
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


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", DOCS, ids=page_id)
def test_every_pipe_row_belongs_to_a_table(page: Path) -> None:
    text = page.read_text()
    in_tables = {t.first_line + n for t in tables(text) for n in range(len(t.source))}
    stray = [
        f"line {n + 1}: {line[:60]}"
        for n, line in enumerate(text.splitlines())
        if line.lstrip().startswith("|") and n not in in_tables and n not in code_lines(text)
    ]
    assert not stray, "rows the parser does not read as part of a table (a blank line inside one?):\n" + "\n".join(
        stray
    )


def test_the_parser_finds_the_tables() -> None:
    assert len(tables(README.read_text())) >= 3 and len(tables(CONFIGURATION.read_text())) == 1


@pytest.mark.parametrize("page", DOCS, ids=page_id)
def test_every_table_keeps_all_its_rows_and_cells(page: Path) -> None:
    found = tables(page.read_text())
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
    (table,) = [t for t in tables(CONFIGURATION.read_text()) if t.rows[0][:2] == ["key", "default"]]
    rows: dict[str, ConfigRow] = {}
    for cells_ in table.rows[1:]:
        row = ConfigRow(re.findall(r"`([\w:]+)`", cells_[0]), " | ".join(cells_[1:]))
        rows.update(dict.fromkeys(row.keys, row))
    return rows


def declared_keys() -> dict[str, str]:
    """Each key Pulumi.yaml declares (without the namespace) -> its type."""
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    return {k.split(":", 1)[1]: v["type"] for k, v in declared.items()}


def integer_keys() -> list[str]:
    return [key for key, kind in declared_keys().items() if kind == "integer"]


def accepted(ssh_key: Path, key: str, value: int) -> bool:
    try:
        cfg.load({"sshKeyPath": str(ssh_key), key: str(value)}, "t")
    except cfg.ConfigError as err:
        # A node address inside the MetalLB pool is reported on the pool's key, naming the node.
        assert {p.key for p in err.problems} <= {key, "loadBalancerAddresses"}, err
        return False
    return True


@pytest.mark.parametrize("key", integer_keys())
def test_config_table_states_the_range_the_program_enforces(ssh_key: Path, key: str) -> None:
    low, high = config_rows()[key].stated_range(key)
    assert accepted(ssh_key, key, low) and not accepted(ssh_key, key, low - 1), f"{key}: lowest is {low}"
    if high is not None:
        assert accepted(ssh_key, key, high) and not accepted(ssh_key, key, high + 1), f"{key}: highest is {high}"


def test_config_table_names_every_declared_key_and_no_other() -> None:
    documented, declared = set(config_rows()) - {"libvirt:uri"}, set(declared_keys())
    assert documented == declared, (
        f"undocumented: {sorted(declared - documented)}; undeclared: {sorted(documented - declared)}"
    )


# ---- links, make targets and config keys -----------------------------------------------------------


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    tokens, seen, found = parse(page.read_text()), dict[str, int](), set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = github_slug(tokens[i + 1].content.replace("`", ""))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    hrefs: list[str] = []
    for token in parse(page.read_text()):
        for child in token.children or []:
            if child.type == "link_open":
                hrefs.append(str(child.attrs["href"]))
    return hrefs


def broken_link(page: Path, href: str) -> str | None:
    """Why a relative link of `page` does not resolve, or None when it does (web links are not followed)."""
    if re.match(r"[a-z]+:", href):
        return None
    path, _, anchor = href.partition("#")
    target = (page.parent / path).resolve() if path else page
    if not target.exists():
        return f"{href}: no file {target}"
    if ROOT not in target.parents and target != ROOT:
        return f"{href}: outside the repository"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"{href}: no heading #{anchor} in {target.name} (has {sorted(anchors(target))})"
    return None


@pytest.mark.parametrize("page", DOCS, ids=page_id)
def test_every_link_and_anchor_resolves(page: Path) -> None:
    problems = [why for href in links(page) if (why := broken_link(page, href))]
    assert not problems, "\n".join(problems)


def test_a_broken_link_or_anchor_is_caught(tmp_path: Path) -> None:
    assert github_slug("The toolchain (make toolchain)") == "the-toolchain-make-toolchain"
    assert {"what-pulumi-up-builds", "make-render-and-make-bench"} <= anchors(ROOT / "docs" / "design.md") | anchors(
        ROOT / "docs" / "testing.md"
    )
    page = ROOT / "docs" / "operations.md"
    assert broken_link(page, "design.md#layout") is None
    assert broken_link(page, "design.md#no-such-heading") is not None
    assert broken_link(page, "missing.md") is not None
    assert broken_link(page, "#scale-the-workers") is None and broken_link(page, "#scale") is not None


def without_the_seeds_targets(text: str) -> str:
    """The seed's make targets are named for comparison, not to be run."""
    start = text.find("## The seed's make targets")
    if start < 0:
        return text
    end = text.find("\n## ", start + 1)
    return text[:start] + (text[end:] if end >= 0 else "")


def make_targets_named() -> dict[str, set[str]]:
    """Page -> the targets it tells you to run (`make x`, code lines, `$(make -s x)`)."""
    pattern = re.compile(r"(?:^|[`(])make (?:-\S+ )*([a-z][\w-]*)", flags=re.MULTILINE)
    return {page_id(page): set(pattern.findall(without_the_seeds_targets(page.read_text()))) for page in DOCS}


def test_every_make_target_the_docs_name_is_one_make_help_lists() -> None:
    named = make_targets_named()
    assert {"up", "test", "stack", "env", "test-deps", "preview"} <= named["README.md"] | named["docs/configuration.md"]
    assert {"toolchain", "plugins", "image", "e2e", "e2e-lifecycle", "render", "bench"} <= set().union(*named.values())
    unknown = {page: sorted(targets - help_targets()) for page, targets in named.items() if targets - help_targets()}
    assert not unknown, f"targets make help does not list: {unknown}"


def refused_as_unknown(ssh_key: Path, key: str) -> bool:
    """The program stops at `key` as a stack file would give it (namespaced), as a key it does not read."""
    try:
        cfg.load_namespaced({f"{cfg.NAMESPACE}:sshKeyPath": str(ssh_key), f"{cfg.NAMESPACE}:{key}": "1"}, "t")
    except cfg.ConfigError as err:
        return any(p.key == key for p in err.problems)
    return False


def config_keys_named(page: Path) -> set[str]:
    """Keys a page names with their namespace, with `--set key=`, or in the first column of a table of changes."""
    text = page.read_text()
    # Not type tokens (kube-on-air:node:Node), not the placeholder of `--set key=value`.
    keys = set(re.findall(rf"\b{cfg.NAMESPACE}:(\w+)\b(?!:)", text)) | set(
        re.findall(r"--set ([a-z]\w*[A-Z]\w*)=", text)
    )
    for table in tables(text):
        if table.rows[0][0] == "change":
            keys |= {k for row in table.rows[1:] for k in re.findall(r"`([a-z]+[A-Z]\w*)`", row[0])}
    return keys


def keys_in_commands(page: Path) -> set[str]:
    """Keys in the page's code blocks: the commands a reader copies."""
    code = "\n".join(t.content for t in parse(page.read_text()) if t.type in ("fence", "code_block"))
    return set(re.findall(rf"\b{cfg.NAMESPACE}:(\w+)\b(?!:)", code)) | set(
        re.findall(r"--set ([a-z]\w*[A-Z]\w*)=", code)
    )


@pytest.mark.parametrize("page", DOCS, ids=page_id)
def test_every_config_key_in_a_command_is_declared(page: Path) -> None:
    undeclared = sorted(keys_in_commands(page) - set(declared_keys()))
    assert not undeclared, f"{page_id(page)} has commands with keys the program does not read: {undeclared}"


@pytest.mark.parametrize("page", DOCS, ids=page_id)
def test_every_config_key_the_docs_name_is_declared_or_shown_refused(ssh_key: Path, page: Path) -> None:
    # A key that is not declared may appear only as an example of a mistake, which the program must refuse.
    undeclared = config_keys_named(page) - set(declared_keys())
    accepted = sorted(key for key in undeclared if not refused_as_unknown(ssh_key, key))
    assert not accepted, f"{page_id(page)} names keys the program neither declares nor refuses: {accepted}"


def test_the_key_checks_see_the_keys_the_docs_name(ssh_key: Path) -> None:
    assert {"workerCount", "workerCont"} <= config_keys_named(ROOT / "docs" / "configuration.md")
    assert {"networkCidr", "workerCount"} <= config_keys_named(ROOT / "docs" / "operations.md")
    assert {"workerVcpu", "controlPlaneMemoryMiB", "kubernetesVersion"} <= config_keys_named(
        ROOT / "docs" / "operations.md"
    )
    assert refused_as_unknown(ssh_key, "workerCont") and not refused_as_unknown(ssh_key, "workerCount")
    assert {"networkCidr", "workerCount"} <= keys_in_commands(ROOT / "docs" / "operations.md")


def paths_named(page: Path) -> set[str]:
    """Repository paths a page names in code (`components/config/settings.py`) and modules it runs (`python -m x.y`)."""
    text = page.read_text()
    paths = set(re.findall(r"`((?:components|templates|tools|tests|docs)/[^`\s]*)`", text))
    modules = {m.replace(".", "/") + ".py" for m in re.findall(r"python -m ((?:tools|tests)[\w.]*)", text)}
    return paths | modules


@pytest.mark.parametrize("page", DOCS, ids=page_id)
def test_every_path_and_module_the_docs_name_exists(page: Path) -> None:
    missing = sorted(path for path in paths_named(page) if not (ROOT / path).exists())
    assert not missing, f"{page_id(page)} names what is not in the repository: {missing}"


def test_the_path_check_sees_the_paths_the_docs_name() -> None:
    named = set().union(*(paths_named(page) for page in DOCS))
    assert {
        "components/preflight/facts.py",
        "tools/offline.py",
        "tests/toolchain/engine.py",
        "templates/image/",
    } <= named
