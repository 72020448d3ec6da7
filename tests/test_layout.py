"""docs/design.md's layout table is the code's: each module's imports within the package, read
from its source, are the ones its row names."""

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
PACKAGE = TOP / "padata_mp"
ENGINE = {"ranges", "errors", "checks", "interrupts", "mutex", "job", "topology", "shm", "worker"}
ENGINE |= {"manager", "running", "pool", "padata_mp"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "padata_mp"


def imports() -> dict[str, set[str]]:
    """Each module's relative imports, as names relative to the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        here = [] if name == "padata_mp" else name.split(".")
        package = here if path.name == "__init__.py" else here[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    deps.add(".".join([*base, node.module]))
                else:
                    deps |= {".".join([*base, alias.name]) for alias in node.names}
        found[name] = deps
    return found


def documented() -> dict[str, set[str]]:
    text = (TOP / "docs/design.md").read_text()
    table = text.split("| module | what | knows of |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.match(r"`([\w.]+)`", cells[0]).group(1)
        rows[name] = set() if cells[-1] == "nothing" else {d.strip() for d in cells[-1].split(",")}
    return rows


def test_design_md_names_every_module_and_its_imports():
    code, doc = imports(), documented()
    assert set(doc) == set(code), (
        f"rows missing: {set(code) - set(doc)}; rows of nothing: {set(doc) - set(code)}"
    )
    wrong = {name: (doc[name], code[name]) for name in code if doc[name] != code[name]}
    assert not wrong, f"design.md says, the code imports: {wrong}"


def test_the_engine_knows_nothing_of_the_model_the_benchmark_or_the_command_line():
    for name, deps in imports().items():
        if name in ENGINE:
            assert deps <= ENGINE, f"{name} imports {deps - ENGINE}"


def test_no_two_modules_reach_each_other():
    try:
        tuple(TopologicalSorter(imports()).static_order())
    except CycleError as cycle:
        raise AssertionError(f"an import cycle: {cycle.args[1]}") from None
