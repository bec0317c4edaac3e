"""The stages import only earlier ones (docs/architecture.md → Layers), so none can reach into a later one.

Every import is read, including those inside functions and under ``TYPE_CHECKING``, and every string that
names a tuneloop module (what ``importlib.import_module`` is given), so a dependency can't hide from it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import tuneloop

PACKAGE = Path(tuneloop.__file__).parent
# The loop's stages, earliest first; "core" is the top-level modules (task, protocol, checks, upstreams...).
STAGES = ("core", "store", "bases", "registry", "data", "train", "review", "serve", "evals", "monitor", "capture")
# Edges may import any stage: the CLI, the web UI, the demo, doctor, the test tooling, and the package's
# own __init__ (it re-exports the SDK wrapper, `from tuneloop import OpenAI`, lazily).
EDGES = ("cli", "ui", "demo", "doctor", "testing", "__init__")
# Same rank: neither may import the other... except in this one direction.
SAME_RANK = {("registry", "bases")}
# The process that runs the gateway mounts the web UI when its config says so (an edge inside a stage).
ALLOWED = {("tuneloop.capture.server", "tuneloop.ui")}


@dataclass(frozen=True)
class Import:
    where: str  # file:line
    importer: str  # module
    imported: str  # module


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    head = parts[1]
    if head in STAGES or head in EDGES:
        return head
    return "core"


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    where = str(path.relative_to(PACKAGE.parent.parent))
    return imports_in(path.read_text(encoding="utf-8"), where, module_name(path), path.name == "__init__.py")


def imports_in(text: str, where: str, module: str, is_package: bool = False) -> list[Import]:
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(text, where)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
            # `from tuneloop import checks` imports the module tuneloop.checks, not the package.
            names = [f"{names[0]}.{a.name}" if is_module(f"{names[0]}.{a.name}") else names[0] for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text_value = node.value
            if text_value.startswith("tuneloop.") and text_value.replace(".", "").replace("_", "").isalnum():
                names = [text_value] if is_module(text_value) else []
        for name in dict.fromkeys(names):
            if name == "tuneloop" or name.startswith("tuneloop."):
                found.append(Import(f"{where}:{node.lineno}", module, name))
    return found


def violation(item: Import) -> str | None:
    source, target = stage_of(item.importer), stage_of(item.imported)
    if source in EDGES or source == target:
        return None
    if any(item.importer == a and (item.imported == b or item.imported.startswith(b + ".")) for a, b in ALLOWED):
        return None
    if target in EDGES:
        return f"{item.where}: {source} imports {item.imported}, an edge (cli, ui, demo, doctor, testing)"
    if (source, target) in SAME_RANK:
        return None
    if STAGES.index(target) >= STAGES.index(source):
        return f"{item.where}: {source} imports {item.imported} from the later stage {target}"
    return None


def test_no_stage_imports_a_later_stage() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50  # the walk found the package
    problems = [problem for path in files for item in imports_of(path) if (problem := violation(item))]
    assert not problems, "stages import later ones (order: " + " → ".join(STAGES) + "):\n" + "\n".join(problems)


def test_the_walk_sees_imports_inside_functions_relative_ones_and_module_names() -> None:
    text = (
        "def f():\n    from tuneloop.capture import gateway\n"
        "from ..serve import app\n"
        "MODULE = 'tuneloop.evals.runner'\n"
        "from tuneloop.store import session_scope\n"
    )
    found = imports_in(text, "probe.py", "tuneloop.data.probe")
    assert sorted(item.imported for item in found) == [
        "tuneloop.capture.gateway",
        "tuneloop.evals.runner",
        "tuneloop.serve.app",
        "tuneloop.store",
    ]
    problems = {item.imported: violation(item) for item in found}
    assert problems["tuneloop.store"] is None  # an earlier stage
    for later in ("tuneloop.capture.gateway", "tuneloop.serve.app", "tuneloop.evals.runner"):
        assert problems[later] is not None and "probe.py:" in problems[later] and "later stage" in problems[later]


def documented_modules(text: str) -> set[str]:
    """The module paths the layout tree of docs/architecture.md lists (``serve/backends/vllm.py``)."""
    block = text.split("## Layout as built", 1)[1].split("```", 2)[1]
    folders: list[tuple[int, str]] = []
    listed: set[str] = set()
    for line in block.splitlines()[1:]:
        name = line.strip().split(" ", 1)[0]
        if not name or name == "src/tuneloop/":
            continue
        indent = len(line) - len(line.lstrip())
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = "/".join([folder for _, folder in folders] + [name.rstrip("/")])
        if name.endswith("/"):
            folders.append((indent, name.rstrip("/")))
        elif name.endswith(".py"):
            listed.add(path)
    return listed


def test_the_architecture_page_lists_every_module() -> None:
    architecture = PACKAGE.parent.parent / "docs" / "architecture.md"
    listed = documented_modules(architecture.read_text(encoding="utf-8"))
    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts and "__pycache__" not in path.parts
    }
    assert not modules - listed, f"modules missing from docs/architecture.md's layout: {sorted(modules - listed)}"
    assert not listed - modules, f"docs/architecture.md lists modules that do not exist: {sorted(listed - modules)}"
