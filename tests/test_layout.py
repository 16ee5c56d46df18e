"""The tree shows the architecture, and these rules keep it so (checked from the imports themselves):
- app/pipeline imports numpy and itself; of the runtimes only the interface (it is handed a runtime);
- app/onnx (the ONNX file format) imports itself and numpy; the runtimes and the store use it;
- app/runtime imports itself, app/onnx and the runtime libraries: the only code that touches onnxruntime;
- app/store never imports the pipeline, a runtime or the worker;
- app/checkpoint (reading checkpoints, quantizing, filling graph templates) imports itself, app/onnx and numpy;
- app/worker wires the other three together; nothing below it imports it (no module imports upward);
- the page (static/*.py) talks to the worker only: it imports no ORT, only PyScript, JSON and its own modules.
"""

import ast
import re
import sys

import pytest

from conftest import ROOT

STDLIB = set(sys.stdlib_module_names)
# room -> (app modules it may import, outside packages it may import besides the standard library)
ROOMS = {
    "app.pipeline": ({"app.pipeline", "app.runtime.interface"}, {"numpy"}),
    "app.onnx": ({"app.onnx"}, {"numpy"}),
    "app.runtime": ({"app.runtime", "app.onnx"}, {"numpy", "onnxruntime", "tokenizers", "js", "pyodide", "ort", "hf_tokenizers", "lantern_js"}),
    "app.store": ({"app.store", "app.onnx"}, {"numpy", "PIL", "js", "pyodide"}),
    "app.checkpoint": ({"app.checkpoint", "app.onnx"}, {"numpy"}),
    "app.worker": ({"app", "app.pipeline", "app.runtime", "app.store", "app.worker"}, {"numpy", "PIL", "js", "pyodide",
                                                                                    "_pyodide"}),
}
PAGE_MODULES = {p.stem for p in (ROOT / "static").glob("*.py")}


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """Every module a file imports (relative imports resolved), including imports inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            if node.level:  # "from . import gallery" imports a module, not a name
                found |= {f"{module}.{a.name}" for a in node.names if (ROOT / module.replace(".", "/") / f"{a.name}.py").exists()}
    return found


def within(module, allowed):
    return any(module == a or module.startswith(a + ".") for a in allowed)


def violations(path, room):
    own, outside = ROOMS[room]
    bad = []
    for module in sorted(imports(path)):
        top = module.split(".")[0]
        if top == "app":
            if not within(module, own):
                bad.append(module)
        elif top not in STDLIB and top not in outside:
            bad.append(module)
    return bad


APP_FILES = sorted((ROOT / "app").rglob("*.py"))


def test_every_app_module_lives_in_a_room():
    loose = [p.relative_to(ROOT).as_posix() for p in APP_FILES if p.parent == ROOT / "app" and p.name != "__init__.py"]
    assert loose == []
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((ROOT / room.replace(".", "/") / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{room} must open by saying what it holds and what it may import"


@pytest.mark.parametrize("path", [p for p in APP_FILES if p.parent != ROOT / "app"], ids=lambda p: module_name(p))
def test_imports_follow_the_room_rules(path):
    room = ".".join(module_name(path).split(".")[:2])
    assert violations(path, room) == [], f"{module_name(path)} imports outside what {room} may use"


@pytest.mark.parametrize("path", sorted((ROOT / "static").glob("*.py")), ids=lambda p: p.name)
def test_the_page_talks_only_to_the_worker(path):
    allowed = {"pyscript", "js", "json", "asyncio", "sys"} | PAGE_MODULES | {f"{m}_ui" for m in PAGE_MODULES}
    outside = [m for m in imports(path) if m.split(".")[0] not in allowed]
    assert outside == []
    assert not re.search(r"\bort\b|onnxruntime", path.read_text()), f"{path.name} touches ORT"
