# SPDX-License-Identifier: Apache-2.0
"""The package's shape: no import cycles among its modules, no script imported, the old converter paths work, and
every Python file starts with the same license line and a docstring."""

import ast
import re
import subprocess
import sys

from .conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "modeling_ijepa"
SCRIPTS = {"run_pretraining", "run_linear_probe"}


def module_name(path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, modules: set[str]) -> set[str]:
    """The package modules that `path` imports, at module level or inside functions alike."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in modules} - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths} | SCRIPTS
    return {module_name(path): imported_modules(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_sees_the_converters():
    graph = import_graph()
    assert "modeling_ijepa.conversion.reference" in graph["modeling_ijepa.conversion.vjepa"]
    assert "modeling_ijepa.conversion.vjepa" in graph["modeling_ijepa.conversion.ijepa"]


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_a_script():
    offenders = {module: sorted(imports & SCRIPTS) for module, imports in import_graph().items() if imports & SCRIPTS}
    assert not offenders


def test_old_converter_paths_still_work():
    code = (
        "from modeling_ijepa.convert_official import (UnsafeCheckpointError, convert_checkpoint, convert_encoder, "
        "convert_predictor, load_reference_checkpoint, main, strip_prefix)\n"
        "from modeling_ijepa.conversion import reference\n"
        "assert load_reference_checkpoint is reference.load_reference_checkpoint\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "modeling_ijepa.convert_official", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and "--checkpoint" in result.stdout, result.stderr


def test_every_file_has_the_license_line_and_a_docstring():
    SPDX = "# SPDX-License-Identifier: Apache-2.0"
    paths = [REPO_ROOT / "run_pretraining.py", REPO_ROOT / "run_linear_probe.py"]
    paths += [path for folder in ("modeling_ijepa", "benchmarks", "tests") for path in (REPO_ROOT / folder).rglob("*.py")]
    without_line = []
    for path in paths:
        lines = path.read_text().splitlines()
        first = lines[1] if lines and lines[0].startswith("#!") else (lines[0] if lines else "")
        if first != SPDX:
            without_line.append(str(path.relative_to(REPO_ROOT)))
    assert not without_line
    without_docstring = [
        path.name for path in PACKAGE.rglob("*.py") if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert not without_docstring


def expand_braces(text: str) -> str:
    """`modeling_{ijepa,vjepa}.py` -> `modeling_ijepa.py modeling_vjepa.py`."""
    def expand(match):
        return " ".join(f"{match.group(1)}{option}{match.group(3)}" for option in match.group(2).split(","))

    return re.sub(r"(\w*)\{([\w,]+)\}(\.py)", expand, text)


def test_the_readme_layout_names_every_module_of_each_room_and_nothing_else():
    readme = (REPO_ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    package_block = expand_braces(layout.split("run_pretraining.py", 1)[0])
    rooms = {"": []}
    room = ""
    for line in package_block.splitlines():
        if match := re.match(r"^  (\w+)/", line):
            room = match.group(1)
            rooms[room] = []
        rooms[room].append(line)
    for room, lines in rooms.items():
        named = set(re.findall(r"\b(\w+)\.py\b", " ".join(lines)))
        folder = PACKAGE / room
        present = {path.stem for path in folder.glob("*.py")} - {"__init__", "__main__"}
        assert named == present, f"README layout of modeling_ijepa/{room}: names {sorted(named - present)} that do " \
                                 f"not exist, misses {sorted(present - named)}"
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    assert folders == set(rooms) - {""}
