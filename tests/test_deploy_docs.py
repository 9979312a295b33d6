"""The operator docs cannot drift from the code: settings, connector properties, commands, links.

A new ``Settings`` field without a row in docs/configuration.md, a connector property
without an explanation, a ``feedstore`` command line in the docs that the CLI would
reject, or a link to a page or heading that is not there, fails here.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from feedstore.cli import parser
from feedstore.config import Settings
from feedstore.connector import Database, connector_config
from materializer.mapping import load_mapping

PROJECT = Path(__file__).resolve().parents[1]
DOCS = PROJECT / "docs"
OURS = ["index.md", "quickstart.md", "configuration.md", "troubleshooting.md", "scaling.md"]


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0]] = cells[1:]
    return rows


def doc_default(value: object) -> str:
    return "(empty)" if value == "" else f"`{value}`"


def test_every_setting_is_documented_with_its_default() -> None:
    rows = table_rows(section((DOCS / "configuration.md").read_text(), "Settings"))
    expected = {}
    for f in fields(Settings):
        if f.name.startswith("_"):
            continue
        expected[f"`{Settings.env_var(f.name)}`"] = doc_default(getattr(Settings, f.name))
    missing = sorted(set(expected) - set(rows))
    assert not missing, f"docs/configuration.md has no row for {missing}"
    stale = sorted(set(rows) - set(expected))
    assert not stale, f"docs/configuration.md documents settings that do not exist: {stale}"
    for var, default in expected.items():
        assert rows[var][0] == default, f"{var}: the doc says {rows[var][0]}, the code {default}"
        assert len(rows[var][1]) > 20, f"{var}: say what it means"


def test_every_connector_property_is_explained() -> None:
    mapping = load_mapping(PROJECT / "deploy" / "mappings" / "spacevegas.yaml")
    config = connector_config(mapping, Database(hostname="h", dbname="d"))["config"]
    text = section((DOCS / "configuration.md").read_text(), "The Debezium connector")
    documented = {name for row in table_rows(text) for name in re.findall(r"`([a-z.]+)`", row)}
    missing = sorted(set(config) - {"name"} - documented)
    assert not missing, f"docs/configuration.md does not explain {missing}"


def doc_commands(text: str) -> list[str]:
    """``feedstore ...`` command lines in the code blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```(?:sh)?\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            m = re.search(r"(?:^|\s)feedstore ((?:source|connector-config|serve|stack|demo|quarantine)\b.*)", line)
            if m:
                out.append(m.group(1))
    return out


@pytest.mark.parametrize("page", OURS)
def test_documented_commands_are_accepted_by_the_cli(page: str) -> None:
    commands = doc_commands((DOCS / page).read_text())
    for command in commands:
        words = shlex.split(command.split(" #")[0].replace("<", "X").replace(">", "X"))
        try:
            parser().parse_args(words)
        except SystemExit as ex:
            raise AssertionError(f"{page}: `feedstore {command}` is not a valid command") from ex
    if page == "quickstart.md":
        assert len(commands) >= 6  # the onboarding path is spelled out command by command


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("page", OURS)
def test_links_resolve(page: str) -> None:
    path = DOCS / page
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if target.startswith("http"):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{page}: link to {target}: {dest} does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page}: link to {target}: no such heading"


def test_quickstart_names_every_compose_secret() -> None:
    compose = yaml.safe_load((PROJECT / "deploy" / "compose.yaml").read_text())
    text = (DOCS / "quickstart.md").read_text()
    for secret in compose["secrets"].values():
        assert f"deploy/secrets/{Path(secret['file']).name}" in text
