"""The layers import one way: polar_data never imports polar_model."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import polar_data

ROOT = Path(__file__).resolve().parents[1]


def test_polar_data_imports_with_polar_model_unimportable():
    modules = sorted(m.name for m in pkgutil.walk_packages(polar_data.__path__, "polar_data."))
    code = ("import sys, importlib\n"
            "sys.modules['polar_model'] = None  # any import of it raises ImportError\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "print('ok', len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    assert len(modules) > 20


def test_no_polar_model_import_under_polar_data_and_no_sys_path_edits_in_the_package():
    for p in (ROOT / "polar_data").rglob("*.py"):
        text = p.read_text()
        assert "polar_model" not in text, p
        assert "sys.path" not in text, p
