"""The import graph is the architecture: core <- {simulator, engine <- calibrate} <- {inferplan, app, benchmarks}."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "simulator", "engine", "calibrate", "inferplan", "app_pages", "benchmarks")
# Which packages each may import. calibrate drives our engine (DESIGN: "calibrate drives engines"); nothing
# else of the packages below the tools imports a sibling.
ALLOWED = {
    "core": set(),
    "simulator": {"core"},
    "engine": {"core"},
    # calibrate also simulates: from-benchmark fits an engine profile by simulating measured runs (issue 12)
    "calibrate": {"core", "engine", "simulator"},
    "inferplan": {"core", "simulator", "calibrate"},
    "app_pages": {"core", "simulator"},
    "benchmarks": {"core", "simulator", "engine", "calibrate"},
}


def imports_of(package: str) -> dict[str, set[str]]:
    """The sibling packages each module of `package` imports (module-level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tops = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                tops.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = {t for t in tops if t in PACKAGES and t != package}
    return found


def test_every_package_imports_only_what_the_architecture_allows():
    wrong = [
        f"{module} imports {sorted(uses - ALLOWED[package])}"
        for package in ALLOWED
        for module, uses in imports_of(package).items()
        if uses - ALLOWED[package]
    ]
    assert not wrong, wrong


def test_core_and_the_simulator_import_neither_torch_nor_transformers():
    heavy = {"torch", "transformers", "pynvml", "streamlit"}  # (ray is the search's optional, lazy backend)
    for package in ("core", "simulator"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                assert not {n.split(".")[0] for n in names} & heavy, f"{path} imports {names}"


def test_the_checker_sees_a_forbidden_edge(tmp_path, monkeypatch):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("def f():\n    from simulator import scenario\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert imports_of("core") == {"core/bad.py": {"simulator"}}
