"""Flower is an optional extra: gradguard imports without it, and gradguard.flower says how to get it."""

import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": SRC, "PATH": ""})


def test_gradguard_does_not_import_flower():
    result = _run("import sys, gradguard; print('flwr' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_gradguard_flower_without_flower_names_the_extra():
    # sys.modules[name] = None makes `import name` fail, as when the package is absent.
    result = _run("import sys; sys.modules['flwr'] = None; import gradguard.flower")
    assert result.returncode != 0
    assert 'pip install "gradguard[flower]"' in result.stderr
