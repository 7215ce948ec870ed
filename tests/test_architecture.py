"""Dependencies point one way: service -> models -> solver; solver stays pure."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("solver", {"models", "service", "fastapi", "httpx", "uvicorn", "pydantic"}),
    ("models", {"service", "fastapi", "uvicorn"}),
])
def test_packages_import_only_downstream(package, forbidden):
    for path, names in imported_modules(package).items():
        assert not names & forbidden, f"{path} imports {names & forbidden}"


def test_only_the_index_modules_touch_faiss():
    allowed = {"solver/index.py", "solver/fused.py"}
    for package in ("solver", "models", "service"):
        for path, names in imported_modules(package).items():
            if "faiss" in names:
                assert path in allowed, f"{path} imports faiss"


def test_solver_reads_no_environment():
    for path in (ROOT / "solver").rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path
