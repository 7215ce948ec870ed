"""The project's texts stand alone: none names an internal work item a reader cannot resolve.

Docs, README, code and comments, the CLI's ``--help`` pages and the OpenAPI schema say what a
thing is ("the blend margin", "the AMX screen"), never which work item made it ("stop 22",
"issue 15", "(issue 13)", "this round"). History lives in git.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]

# Specific forms only, so ordinary words pass: "docker stop", "stops at", "round(x, 2)",
# "clips in round r", "test session", "issues a warning", an option such as "--rounds 3".
WORK_ITEM = re.compile(
    r"""
    (?<!-)\b(?:stop|issue|round|session|ticket)s?(?:[ ]|-|[ ]?\#)\d+\b  # "stop 22", "issue #7"
    | \(issue\b                                              # "(issue 13)", "(issue: ...)"
    | \bthe[ ]issue'?s\b                                     # "the issue's goal"
    | \b(?:this|that|previous|earlier|later)[ ](?:stop|session)\b
    | \b(?:this|the[ ]previous|an[ ]earlier|a[ ]later)[ ]round\b(?![ ]of)  # not "... round of"
    | benchmarks\.md,?[ ]runs?[ ]\d+                         # a run number of a lab notebook
    """,
    re.IGNORECASE | re.VERBOSE,
)

# What the project ships and documents: its text files, outside build outputs and environments.
TOP_LEVEL = ["README.md", "setup.py", "pyproject.toml", "Dockerfile", "compose.yaml"]
FOLDERS = ["docs", "solver", "models", "service", "bench", "tests", "docker", ".ci"]
SUFFIXES = {".md", ".py", ".pyi", ".c", ".h", ".sh", ".toml", ".yml", ".yaml", ".html", ".js"}
SUFFIXES |= {".css", ".txt", ".cfg", ".ini", ".json", ""}
SKIP_PARTS = {"__pycache__", ".venv", "build", "out", ".pytest_cache", ".mypy_cache"}


def project_texts() -> list[Path]:
    files = [ROOT / name for name in TOP_LEVEL if (ROOT / name).is_file()]
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_file() and path.suffix in SUFFIXES and not SKIP_PARTS & set(rel.parts):
                files.append(path)
    return [path for path in files if path != Path(__file__).resolve()]


def hits(text: str) -> list[str]:
    return [match.group(0) for match in WORK_ITEM.finditer(text)]


@pytest.mark.parametrize(
    "text",
    [
        "Rerun in stop 22 with the blend margin",
        "before the engine work of issue 15",
        "help='pairs to list (issue 13)'",
        "The issue's goal, p99 <= 50 ms",
        "stops 23 and 24",
        "left for a later round",
        "figures of this round",
        "see issue #7",
        "(benchmarks.md, run 8)",
    ],
)
def test_the_pattern_catches_work_items(text: str) -> None:
    assert hits(text), text


@pytest.mark.parametrize(
    "text",
    [
        "docker stop aeot",
        "the fit stops at 2e-3",
        "round(seconds, 2)",
        "one half-plane of every facet per round r",
        "a fitted store made once per test session",
        "it issues a warning",
        "most runs 116-130 s; ten runs",
        "python bench/train_speed.py --rounds 3",
        "the lead's release; a round trip to the host",
        "the poller rebuilds the catalogue at its next round",
        "in the previous round of clipping",
    ],
)
def test_the_pattern_passes_ordinary_words(text: str) -> None:
    assert not hits(text), text


def test_no_project_text_names_a_work_item() -> None:
    files = project_texts()
    assert ROOT / "README.md" in files and len(files) > 100  # the walk found the tree
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (images, archives): no prose
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {hit!r}" for hit in hits(line)]
    assert not found, "internal work items named:\n" + "\n".join(found)


def _command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += _command_paths(sub, (*prefix, name))
    return paths


def test_no_help_page_names_a_work_item() -> None:
    from typer.testing import CliRunner

    from service.cli import app

    paths = _command_paths(typer.main.get_command(app))
    assert ("sample",) in paths and ("models", "list") in paths  # every command walked
    found = {}
    for path in paths:
        run = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert run.exit_code == 0, (path, run.output)
        page = re.sub(r"[\s\u2500-\u257f]+", " ", run.output)  # rich's boxes and wrapping
        if hits(page):
            found[" ".join(path)] = hits(page)
    assert not found, found


def test_the_openapi_schema_names_no_work_item(tmp_path: Path) -> None:
    from service.app import create_app
    from tests.service_helpers import make_settings

    schema = json.dumps(create_app(make_settings(tmp_path / "store")).openapi())
    assert "/sample" in schema
    assert not hits(schema), hits(schema)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_markdown_anchor_link_resolves() -> None:
    """Links such as ``benchmarks.md#service-...`` point at a heading that exists."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    anchors = {
        page: {_slug(m) for m in re.findall(r"^#+ (.+)$", page.read_text(), re.M)} for page in pages
    }
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?#([^)\s]+)\)", page.read_text()):
            linked = (page.parent / target).resolve() if target else page
            if anchor not in anchors.get(linked, set()):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, broken
