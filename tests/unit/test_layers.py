"""The package's imports, read from the source (ast): layered bottom-up, no circle, nothing hidden.

Every module of ``pgvector_deploy`` has one layer in ``LAYERS``; a module imports only modules
of lower layers (a module of the same layer is a sideways step, and sideways steps are how
circles start). No import of the package sits inside a function or under ``TYPE_CHECKING``:
those are the usual ways to hide a circle from Python while keeping it in the design. (A
third-party import inside a function stays allowed: ``boto3`` is imported only by the code
that talks to AWS, so that a run without AWS does not pay for loading it.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "pgvector_deploy"

# Bottom-up. What each layer holds:
LAYERS: list[tuple[str, set[str]]] = [
    # data with no package import: shell messages and failures, path constants, the release
    # table, the EC2 inventory, the SSH tunnel
    ("data", {"errors", "paths", "releases", "ec2", "tunnel"}),
    # data built on those: the platform table, migration files (read and checked on the control machine)
    ("data tables", {"platforms", "migration_files"}),
    # host data declared and validated (pure); commands that run psql as postgres, the host lock
    ("settings and shell", {"settings", "shell"}),
    # every fact class and its parser
    ("facts", {"facts"}),
    # the plan the stages receive; the loading step (tarball digest, SSM, migration folder)
    ("plan and loading", {"plan", "loading"}),
    # config files: render, check with PostgreSQL, keep a copy, replace, roll back, prune
    ("managed files", {"managed_files"}),
    # operations per component
    ("components", {"postgres", "pgvector", "networking", "tuning", "migrations", "backups"}),
    # components built on other components' helpers (appenv: networking's addresses;
    # smoke: networking's and backups' names)
    ("components on components", {"appenv", "smoke"}),
    ("apps", {"apps"}),  # the app role and database, with appenv's role-password script
    ("preflight", {"preflight"}),  # builds the plan (or a refusal); may use components' pure checks
    ("recipe", {"recipe", "nightly"}),  # the recipe's order and its packaged deploys; the nightly runner
    ("package", {"__init__"}),  # what ``import pgvector_deploy`` gives: the packaged deploys
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}
DEPLOYS = sorted((REPO / "deploy").glob("*.py"))  # above everything: they may import any module


def package_modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


def imported_modules(node: ast.AST, module: str | None) -> list[str]:
    """The package's modules an import statement names (``from . import a, b`` names a and b)."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("pgvector_deploy.")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 1 or node.module == "pgvector_deploy" or (node.module or "").startswith("pgvector_deploy."):
        base = node.module if node.level == 1 else (node.module or "").removeprefix("pgvector_deploy").lstrip(".")
        if base:
            return [base.split(".")[0]]
        return [alias.name for alias in node.names]
    return []


def imports_of(path: Path) -> dict[str, list[tuple[int, str]]]:
    """``top``: the package's modules imported at module level; ``hidden``: imports of the
    package inside a function or class body or under ``if TYPE_CHECKING``; ``type_checking``:
    any ``TYPE_CHECKING`` at all."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, list[tuple[int, str]]] = {"top": [], "hidden": [], "type_checking": []}

    def visit(node: ast.AST, hidden: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in imported_modules(child, path.stem):
                    found["hidden" if hidden else "top"].append((child.lineno, name))
            elif isinstance(child, ast.Name) and child.id == "TYPE_CHECKING":
                found["type_checking"].append((child.lineno, "TYPE_CHECKING"))
            elif isinstance(child, ast.alias) and child.name == "TYPE_CHECKING":
                found["type_checking"].append((getattr(child, "lineno", 0), "TYPE_CHECKING"))
            inner = hidden or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = True
            visit(child, inner)

    visit(tree, False)
    return found


def test_every_module_has_a_layer():
    missing = [module for module in package_modules() if module not in LAYER_OF]
    gone = sorted(set(LAYER_OF) - set(package_modules()))
    assert not missing, f"modules without a layer in LAYERS: {missing}"
    assert not gone, f"LAYERS names modules that are not in the package: {gone}"


@pytest.mark.parametrize("path", [*(PACKAGE / f"{m}.py" for m in package_modules()), *DEPLOYS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_hidden_import(path):
    found = imports_of(path)
    assert not found["hidden"], f"{path.name}: imports of the package inside a function or TYPE_CHECKING block: {found['hidden']}"
    assert not found["type_checking"], f"{path.name}: TYPE_CHECKING at lines {[line for line, _ in found['type_checking']]}"


@pytest.mark.parametrize("module", package_modules())
def test_imports_go_down(module):
    mine = LAYER_OF[module]
    upward = [
        f"line {line}: {name} ({LAYERS[LAYER_OF[name]][0]})"
        for line, name in imports_of(PACKAGE / f"{module}.py")["top"]
        if LAYER_OF.get(name, len(LAYERS)) >= mine
    ]
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports modules of its own layer or above: {upward}"


def test_no_import_circle():
    graph = {}
    for module in package_modules():
        found = imports_of(PACKAGE / f"{module}.py")
        graph[module] = sorted({name for _, name in found["top"] + found["hidden"]})
    circles = []
    state: dict[str, str] = {}

    def walk(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for name in graph.get(module, ()):
            if state.get(name) == "open":
                circles.append(" -> ".join([*trail[trail.index(name):], name]))
            elif name not in state:
                walk(name, [*trail, name])
        state[module] = "done"

    for module in graph:
        if module not in state:
            walk(module, [module])
    assert not circles, f"import circles: {circles}"


# -- tests mirror the package ----------------------------------------------------------------------

TESTS = REPO / "tests" / "unit"
# Test modules that are no one module's mirror, and what they span instead.
ACROSS = {
    "test_plans": "every operation's plan, for every platform x arch, on recorded facts",
    "test_platform_plans": "the newer platform rows' plans on recorded facts",
    "test_majors": "pg_major beyond 15: settings, platform data, plans",
    "test_build_flags": "the pgvector build against pg_config flags, on a real compiler",
    "test_hostile_app": "a hostile app role against every operation that reads the app's objects",
    "test_hostile_host_data": "hostile values for every declared host data key, through the templates",
    "test_shellcheck": "shellcheck on every shell script and rendered host script",
    "test_benchmarks_vectors": "tests/benchmarks/vectors.py's arithmetic",
    "test_test_tarballs": "tests/hosts/tarballs.py, the lab's release tarballs",
    "test_layers": "the package's import layers, and this mirror",
}
NO_TESTS_OF_ITS_OWN = {"__init__": "two re-exports (test_recipe)", "paths": "constants only"}


def test_every_module_has_a_test_module_of_its_own():
    missing = [m for m in package_modules() if m not in NO_TESTS_OF_ITS_OWN and not (TESTS / f"test_{m}.py").exists()]
    assert not missing, f"modules without tests/unit/test_<module>.py: {missing}"


def test_every_test_module_mirrors_a_module_or_says_what_it_spans():
    modules = set(package_modules())
    strays = []
    for path in sorted(TESTS.glob("test_*.py")):
        name = path.stem.removeprefix("test_")
        # test_<module>.py, or test_<module>_<topic>.py for a module's larger parts
        mirrors = name in modules or any(name.startswith(module + "_") for module in modules)
        if not mirrors and path.stem not in ACROSS:
            strays.append(path.name)
    assert not strays, f"test modules that mirror no module and are not in ACROSS: {strays}"
