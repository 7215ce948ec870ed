"""Dependencies point one way: bench -> service -> models -> solver; solver stays pure.

Outside ``solver`` only its public door (``solver`` itself, and ``solver.plots``, imported on
demand because it needs matplotlib) may be imported: the subpackages are private to it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_SOLVER = {"solver", "solver.plots"}


def imported_modules(package: str) -> dict[str, set[str]]:
    """Full dotted names of every absolute import in each file of ``package``."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("solver", {"models", "service", "bench", "fastapi", "httpx", "uvicorn", "pydantic"}),
        ("models", {"service", "bench", "fastapi", "uvicorn"}),
        ("service", {"bench"}),
    ],
)
def test_packages_import_only_downstream(package, forbidden):
    for path, names in imported_modules(package).items():
        assert not top_level(names) & forbidden, f"{path} imports {top_level(names) & forbidden}"


@pytest.mark.parametrize("package", ["models", "service", "bench"])
def test_solver_is_entered_only_through_its_public_door(package):
    for path, names in imported_modules(package).items():
        private = {n for n in names if n.split(".")[0] == "solver" and n not in PUBLIC_SOLVER}
        assert not private, f"{path} imports solver internals {sorted(private)}"


def test_only_the_index_modules_touch_faiss():
    # bench/ivf.py measures FAISS's approximate index against the exact search; it is no backend.
    allowed = {"solver/cells/index.py", "bench/ivf.py"}
    for package in ("solver", "models", "service", "bench"):
        for path, names in imported_modules(package).items():
            if "faiss" in top_level(names):
                assert path in allowed, f"{path} imports faiss"


@pytest.mark.parametrize("package", ["solver", "models", "service"])
def test_benchmark_peers_stay_in_bench(package):
    # POT and OTT-JAX (with jax) are the optional `bench` extra, never a runtime dependency.
    for path, names in imported_modules(package).items():
        peers = top_level(names) & {"ot", "ott", "jax", "optax"}
        assert not peers, f"{path} imports {peers}"


def test_only_the_kernel_module_loads_the_compiled_kernel():
    def loads_kernel(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name.endswith("._simd") for a in node.names):
                return True
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.endswith("_simd") or any(a.name == "_simd" for a in node.names):
                    return True
        return False

    loaders = {
        str(path.relative_to(ROOT))
        for package in ("solver", "models", "service", "bench", "tests")
        for path in (ROOT / package).rglob("*.py")
        if loads_kernel(path)
    }
    assert loaders == {"solver/cells/simd_index.py"}


def test_the_faiss_allow_list_is_real():
    assert "faiss" in top_level(imported_modules("solver")["solver/cells/index.py"])


def test_solver_reads_no_environment():
    for path in (ROOT / "solver").rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path


def test_only_the_store_opens_the_catalogue_and_its_queue():
    # The store heals both (a rebuild reopens the same objects), so nobody else holds another.
    for path in imported_modules("service"):
        if path not in ("service/store.py", "service/catalog.py"):
            text = (ROOT / path).read_text()
            assert "Catalog(" not in text and "JobQueue(" not in text, path


def test_the_store_passes_nothing_through():
    # Its methods do work of their own (files and rows together); plain catalogue and queue
    # calls go to ``store.catalog`` and ``store.queue``.
    tree = ast.parse((ROOT / "service" / "store.py").read_text())
    (store,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelStore"]
    for method in store.body:
        if isinstance(method, ast.FunctionDef):
            body = [s for s in method.body if not isinstance(s, ast.Expr)]  # docstrings aside
            one_call = (
                len(body) == 1
                and isinstance(body[0], ast.Return)
                and isinstance(body[0].value, ast.Call)
                and isinstance(body[0].value.func, ast.Attribute)
                and ast.unparse(body[0].value.func.value) in ("self.catalog", "self.queue")
            )
            assert not one_call, method.name


def test_routes_do_not_reach_into_the_worker():
    for path, names in imported_modules("service").items():
        if path.startswith("service/routes/"):
            assert "service.worker" not in names, path


def test_solver_names_load_on_first_use_and_the_cli_starts_without_torch():
    """``solver`` and ``models`` export every name their stubs declare; the CLI, the settings
    and the training options need no torch."""
    import subprocess
    import sys

    import models
    import solver

    for package in (solver, models):
        stub = ast.parse((ROOT / package.__name__ / "__init__.pyi").read_text())
        declared = next(
            ast.literal_eval(node.value)
            for node in stub.body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
        )
        assert sorted(declared) == sorted(package.__all__)
        for name in package.__all__:
            assert getattr(package, name) is not None, name
    probe = (
        "import sys, service.cli, service.settings, models.options; "
        "from solver import DEFAULT_BLEND_MARGIN, AdamConfig, NewtonConfig, parse_rule; "
        "print(sorted(m for m in ('torch', 'faiss', 'scipy') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def _project_modules() -> dict[str, Path]:
    """Dotted name of every module of the packages, with its file (a package: __init__.py)."""
    out = {}
    for package in ("solver", "models", "service", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _runtime_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports when it runs: every import statement, in functions too
    (a deferred import closes a circle as surely), except under ``if TYPE_CHECKING:``, and
    relative ones resolved. A package's lazy stub (``__init__.pyi``) counts as its imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    stub = path.with_suffix(".pyi")
    if path.name == "__init__.py" and stub.exists():
        found.update(
            node.module
            for node in ast.walk(ast.parse(stub.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        )
    return {module for module in found if module in known and module != name}


def _import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path that returns to its start, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_no_import_circle_anywhere_in_the_tree():
    modules = _project_modules()
    graph = {name: _runtime_imports(name, path, set(modules)) for name, path in modules.items()}
    assert graph["solver.fitting.driver"] >= {"solver.fitting.methods"}  # the walk sees imports
    assert _import_cycle(graph) is None, " -> ".join(_import_cycle(graph) or [])


def test_the_walk_counts_deferred_imports_and_skips_type_checking_ones(tmp_path):
    """The circle newton -> driver -> newton went through an import inside a function."""
    source = tmp_path / "newton.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import config\n"
        "if TYPE_CHECKING:\n"
        "    from solver.fitting import adam\n"
        "def start():\n"
        "    from solver.fitting import driver\n"
    )
    known = {f"solver.fitting.{m}" for m in ("newton", "config", "adam", "driver")}
    found = _runtime_imports("solver.fitting.newton", source, known)
    assert found == {"solver.fitting.config", "solver.fitting.driver"}
    graph = {"solver.fitting.driver": {"solver.fitting.newton"}, "solver.fitting.newton": found}
    graph["solver.fitting.config"] = set()
    assert _import_cycle(graph) == [
        "solver.fitting.driver",
        "solver.fitting.newton",
        "solver.fitting.driver",
    ]
    assert _import_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None
