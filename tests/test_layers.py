"""The package's layers point one way (the import-linter contract in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(config: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    return subprocess.run([exe, "--no-cache", str(config)], cwd=ROOT, capture_output=True, text=True)


def test_no_module_imports_against_the_layer_order():
    result = lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    """The same check with two layers swapped must fail: render imports model, so model above render is
    broken. Without this, a contract that matched nothing would pass forever."""
    text = (ROOT / "pyproject.toml").read_text()
    render, model = '    "talkgs.render",\n', '    "talkgs.model | talkgs.prepare",\n'
    swapped = text.replace(render + model, model + render)
    assert swapped != text
    config = tmp_path / "pyproject.toml"
    config.write_text(swapped)
    result = lint_imports(config)
    assert result.returncode != 0 and "BROKEN" in result.stdout
