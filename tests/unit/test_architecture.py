"""Architecture: the import graph of `service/` is the one docs/architecture.md describes.

Imports are read with `ast` from the source, every one of them: at module level, inside functions
(lazy imports) and under `if TYPE_CHECKING:`, since each is a dependency a reader has to follow.
Nothing is imported, so TensorFlow never starts here.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SERVICE = REPO / "service"
ARCHITECTURE_DOC = REPO / "docs" / "architecture.md"

MANAGER_NEVER_IMPORTS = (
    "service.app",
    "service.builder",
    "service.loader",
    "service.runner",
    "service.batching",
    "service.sandbox",
    "service.security",
    "service.custom_objects",
    "service.dataplane",
    "service.api",
    "service.protocols",
)
"""What the manager must not know: it receives its builder and is fed by the watcher; it builds nothing."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def service_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SERVICE.rglob("*.py"))}


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The `service` modules that `module` imports (a name imported from a package counts as its submodule if it is one)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = service_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_reader_sees_lazy_and_type_checking_imports() -> None:
    graph = import_graph()

    assert "service.runner" in graph["service.builder"]  # imported inside a method
    assert "service.manager" in graph["service.dataplane"]  # imported under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_service_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())

    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_api_and_protocols_never_import_the_manager() -> None:
    offenders = sorted(
        name
        for name, targets in import_graph().items()
        if name.startswith(("service.api", "service.protocols")) and "service.manager" in targets
    )

    assert offenders == []


def test_the_manager_builds_none_of_its_collaborators() -> None:
    targets = import_graph()["service.manager"]

    assert sorted(t for t in targets if t.startswith(MANAGER_NEVER_IMPORTS)) == []


def model_inputs_builders(sources: dict[str, str]) -> list[str]:
    """The modules (name -> source) that call `ModelInputs(...)`, by name or as an attribute."""
    found = []
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                callee = node.func
                called = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", "")
                if called == "ModelInputs":
                    found.append(name)
                    break
    return found


def test_only_the_boundary_builds_model_inputs() -> None:
    # Every request rule (names, dtypes, row shapes, row counts) is checked where ModelInputs are built,
    # once; the batcher, the runner and the model call trust them (docs/architecture.md, section 3).
    sources = {name: path.read_text(encoding="utf-8") for name, path in service_modules().items()}
    assert model_inputs_builders(sources) == ["service.preprocessing"]
    probes = {"a": "x = ModelInputs(arrays, 1)", "b": "x = servable.ModelInputs(arrays, 1)", "c": "ModelInputs.rows"}
    assert model_inputs_builders(probes) == ["a", "b"]


def test_only_the_composition_root_is_imported_by_no_one_in_service() -> None:
    graph = import_graph()
    importers_of_app = sorted(name for name, targets in graph.items() if "service.app" in targets)

    assert importers_of_app == []
    assert {"service.builder", "service.manager", "service.repository", "service.dataplane", "service.api"} <= graph[
        "service.app"
    ]


TF_FREE = ("service.formats", "service.keras_config")
"""Modules that read and repair model configs without TensorFlow or Keras, not even lazily."""


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (at any level)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_config_reading_modules_never_import_tensorflow_or_keras() -> None:
    modules = service_modules()

    offenders = {
        name: sorted(third_party_imports(modules[name]) & {"tensorflow", "keras", "tf_keras"}) for name in TF_FREE
    }

    assert offenders == {name: [] for name in TF_FREE}


def documented_imports() -> dict[str, set[str]]:
    """The module table of docs/architecture.md: module -> the `service` modules it says it imports."""
    table: dict[str, set[str]] = {}
    for line in ARCHITECTURE_DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`") or not cells[0].endswith(("py`", "/`")):
            continue
        shown = cells[0].strip("`").removesuffix(".py").removesuffix("/")
        module = "service" if shown == "__init__" else "service." + shown.replace("/", ".")
        table[module] = {
            "service" if name == "service" else "service." + name.replace("/", ".")
            for name in (n.strip() for n in cells[2].split(","))
            if name and name != "-"
        }
    return table


def test_architecture_doc_lists_every_module_with_what_it_imports() -> None:
    documented, actual = documented_imports(), import_graph()

    assert sorted(documented) == sorted(actual)
    wrong = {
        name: {"doc": sorted(documented[name]), "code": sorted(actual[name])}
        for name in actual
        if documented[name] != actual[name]
    }
    assert wrong == {}
