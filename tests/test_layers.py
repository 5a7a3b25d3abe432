"""The layers import one way: polar_data never imports polar_model; the model layer
(polar_model outside polar_model.training) imports nothing of polar_data but its generic
YAML -> dataclass loader (polar_data.config.typed_yaml); scripts do not import scripts."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import polar_data
import polar_model

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_IN_MODEL_LAYER = {"polar_data", "polar_data.config", "polar_data.config.typed_yaml"}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_polar_data_imports_with_polar_model_unimportable():
    modules = sorted(m.name for m in pkgutil.walk_packages(polar_data.__path__, "polar_data."))
    code = ("import sys, importlib\n"
            "sys.modules['polar_model'] = None  # any import of it raises ImportError\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "print('ok', len(sys.modules))\n")
    done = _run(code)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    assert len(modules) > 20


def test_no_polar_model_import_under_polar_data_and_no_sys_path_edits_in_the_package():
    for p in (ROOT / "polar_data").rglob("*.py"):
        text = p.read_text()
        assert "polar_model" not in text, p
        assert "sys.path" not in text, p


def _model_layer_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(polar_model.__path__, "polar_model.")
                  if not m.name.startswith("polar_model.training"))


def test_model_layer_imports_with_polar_data_blocked_but_its_config_loader():
    modules = ["polar_model", *_model_layer_modules()]
    code = ("import sys, importlib, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'polar_data' and name not in "
            f"{sorted(ALLOWED_IN_MODEL_LAYER)!r}:\n"
            "            raise ImportError(f'model layer imported {name}')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "assert not any(k.startswith('polar_model.training') for k in sys.modules)\n"
            "print('ok')\n")
    done = _run(code)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    assert len(modules) > 15


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def test_model_layer_source_names_no_polar_data_module_but_typed_yaml():
    for p in (ROOT / "polar_model").rglob("*.py"):
        if "training" in p.relative_to(ROOT).parts:
            continue
        bad = {m for m in _imports(p) if m.split(".")[0] == "polar_data"}
        bad -= ALLOWED_IN_MODEL_LAYER | {"polar_data.config.typed_yaml." + n for n in dir(
            __import__("polar_data.config.typed_yaml", fromlist=["x"]))}
        assert not bad, (p, bad)


def test_scripts_import_no_script_and_edit_no_sys_path():
    scripts = {p.stem for p in (ROOT / "pipelines").glob("*.py")}
    for p in [*(ROOT / "pipelines").glob("*.py"), *(ROOT / "tests").glob("*.py"),
              *(ROOT / "polar_model").rglob("*.py")]:
        assert not {m.split(".")[0] for m in _imports(p)} & scripts, p
        assert "sys.path" not in p.read_text() or p.name == "test_layers.py", p


def test_module_names_are_unique_across_the_packages():
    seen: dict[str, Path] = {}
    for p in [*(ROOT / "polar_data").rglob("*.py"), *(ROOT / "polar_model").rglob("*.py")]:
        if p.name == "__init__.py":
            continue
        assert p.name not in seen, (p, seen.get(p.name))
        seen[p.name] = p
