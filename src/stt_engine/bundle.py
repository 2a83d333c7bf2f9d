"""`stt-engine bundle`: one tarball that installs and runs stt-engine on an air-gapped server.

Built on a connected machine; it holds
- `wheels/`: this project's wheel and every runtime dependency as binary wheels for the target (default Linux x86_64,
  CPython 3.11, glibc 2.28 as on RHEL 8, i.e. manylinux_2_28 and older), fetched with `pip download`;
- `models/<name>/`: one plain CTranslate2 model folder with its `manifest.json`;
- `install.sh` (shipped as package data, `stt_engine/offline/install.sh`, linted by shellcheck in the tests): checks
  `SHA256SUMS`, makes a virtualenv with `pip install --no-index`, verifies the model, writes `.env` and a systemd
  unit, and optionally starts the server;
- `bundle.env`: what install.sh installs (requirement, model folder, Python version, CUDA wheels), shell-quoted;
- `SHA256SUMS` (for `sha256sum -c`) over every file, and `bundle.json` describing the build.
A `<tarball>.sha256` is written next to the tarball so the carried file itself can be checked first.

The tarball is not compressed by default: model weights and wheels barely shrink, and gzip on 2 GB costs a minute.

The `bundle` subcommand lives here too (`register`), so `models/` never imports this module: the dependency runs one
way, bundle -> models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from stt_engine import __version__
from stt_engine.config import get_settings
from stt_engine.errors import STTError
from stt_engine.models.catalog import DEFAULT_MODEL, lookup
from stt_engine.models.verify import MANIFEST_NAME, sha256_file, verify_model_dir, write_manifest

log = logging.getLogger(__name__)

PROJECT_NAME = "stt-engine"
TARGET_PYTHON = "3.11"
# CUDA 12 + cuDNN 9 user-space libraries as wheels; ctranslate2 dlopens them, found through LD_LIBRARY_PATH.
CUDA_LIB_REQUIREMENTS: tuple[str, ...] = ("nvidia-cublas-cu12", "nvidia-cudnn-cu12>=9,<10")
# RHEL 8 has glibc 2.28: wheels tagged manylinux_2_28 or older run there. pip does not expand manylinux_2_X tags by
# itself when --platform is given, so every accepted tag is listed.
TARGET_PLATFORMS: tuple[str, ...] = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)) + (
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)


class BundleError(STTError):
    code = "bundle_failed"


@dataclass
class BundleOptions:
    """Everything `build_bundle` needs; the CLI fills it from flags."""

    model_dir: Path | None  # None: a bundle with wheels only
    output: Path
    model_name: str | None = None  # folder name inside models/ (default: model_dir's name)
    extras: list[str] = field(default_factory=list)
    python_version: str = TARGET_PYTHON
    platforms: list[str] = field(default_factory=lambda: list(TARGET_PLATFORMS))
    current_platform: bool = False  # build for this interpreter and machine instead (tests, non-RHEL targets)
    project_dir: Path | None = None
    wheel: Path | None = None  # a prebuilt stt-engine wheel instead of building one from project_dir
    compress: bool = False
    include_pip: bool = True  # RHEL's python3.11 venv ships an old pip; a current one comes along
    cuda_libs: bool = False  # ship cuBLAS 12 + cuDNN 9 as wheels (about 1.5 GB): no CUDA RPMs on the GPU host


def _run(cmd: list[str], what: str) -> None:
    log.info("running: %s", shlex.join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise BundleError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")


def find_project_dir() -> Path | None:
    """The source checkout this package runs from (src layout), if any: the wheel is built from it."""
    candidate = Path(__file__).resolve().parents[2]
    pyproject = candidate / "pyproject.toml"
    if pyproject.is_file() and f'name = "{PROJECT_NAME}"' in pyproject.read_text(encoding="utf-8"):
        return candidate
    return None


def build_project_wheel(project_dir: Path, wheel_dir: Path) -> Path:
    """Build stt-engine's wheel from a clean copy of the project (so the build never writes into the checkout)."""
    with tempfile.TemporaryDirectory(prefix="stt-engine-src-") as tmp:
        src = Path(tmp) / "project"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (project_dir / name).is_file():
                shutil.copy2(project_dir / name, src / name)
        shutil.copytree(project_dir / "src", src / "src", ignore=ignore)
        if not (src / "README.md").exists():  # pyproject names it; keep the build working on a partial checkout
            (src / "README.md").write_text("stt-engine\n", encoding="utf-8")
        before = set(wheel_dir.glob("*.whl"))
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheel_dir), str(src)],
             "building the stt-engine wheel")
    built = sorted(set(wheel_dir.glob("stt_engine-*.whl")) - before) or sorted(wheel_dir.glob("stt_engine-*.whl"))
    if not built:
        raise BundleError("pip wheel produced no stt_engine wheel")
    return built[-1]


def download_wheels(opts: BundleOptions, wheel_dir: Path) -> None:
    """`pip download` stt-engine (from the local wheel) and all its dependencies as wheels for the target."""
    requirement = PROJECT_NAME + (f"[{','.join(opts.extras)}]" if opts.extras else "") + f"=={__version__}"
    cmd = [sys.executable, "-m", "pip", "download", "--dest", str(wheel_dir), "--find-links", str(wheel_dir),
           "--only-binary=:all:", "--progress-bar", "off"]
    if not opts.current_platform:
        cmd += ["--python-version", opts.python_version, "--implementation", "cp",
                "--abi", "cp" + opts.python_version.replace(".", "")]
        for platform in opts.platforms:
            cmd += ["--platform", platform]
    cmd.append(requirement)
    if opts.include_pip:
        cmd.append("pip")
    if opts.cuda_libs:
        cmd.extend(CUDA_LIB_REQUIREMENTS)
    _run(cmd, "downloading the wheelhouse (needs PyPI or a mirror; PIP_INDEX_URL is honoured)")


def copy_model(model_dir: Path, dest: Path) -> None:
    """Copy a model folder (without hidden bookkeeping) and make sure the copy has a manifest that verifies."""
    if (model_dir / MANIFEST_NAME).is_file():
        result = verify_model_dir(model_dir)
        if not result.ok:
            raise BundleError(f"the model to bundle is damaged: {result.describe()}")
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns(".*"), symlinks=False)
    if not (dest / MANIFEST_NAME).is_file():
        write_manifest(dest, name=dest.name, source={"type": "bundled-folder", "from": str(model_dir)})
    result = verify_model_dir(dest)
    if not result.ok:
        raise BundleError(f"the copied model does not verify: {result.describe()}")


def write_checksums(root: Path) -> Path:
    """`SHA256SUMS` over every file below `root`, in the format `sha256sum -c` reads."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SHA256SUMS"):
        lines.append(f"{sha256_file(path)}  {path.relative_to(root).as_posix()}\n")
    target = root / "SHA256SUMS"
    target.write_text("".join(lines), encoding="utf-8")
    return target


def install_script() -> str:
    """The `install.sh` shipped in every bundle (bash; RHEL 8 has it); static: `bundle.env` says what to install."""
    return resources.files("stt_engine").joinpath("offline/install.sh").read_text(encoding="utf-8")


def render_bundle_env(*, requirement: str, model_name: str | None, python_version: str, cuda_libs: bool = False) -> str:
    """`bundle.env`, sourced by install.sh after the checksums passed: plain shell assignments, every value quoted."""
    values = {
        "REQUIREMENT": requirement,
        "MODEL_NAME": model_name or "",
        "PYTHON_VERSION": python_version,
        "CUDA_LIBS": " ".join(CUDA_LIB_REQUIREMENTS) if cuda_libs else "",
    }
    lines = ["# Written by `stt-engine bundle`; read by install.sh."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def build_bundle(opts: BundleOptions) -> Path:
    """Build the tarball described by `opts` and return its path."""
    project_dir = opts.project_dir or find_project_dir()
    if opts.wheel is None and project_dir is None:
        raise BundleError("cannot find the stt-engine source checkout: pass --project DIR or --wheel FILE")
    output = opts.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    top = f"stt-engine-offline-{__version__}"

    with tempfile.TemporaryDirectory(prefix=".stt-engine-bundle-", dir=output.parent) as tmp:
        root = Path(tmp) / top
        wheel_dir = root / "wheels"
        wheel_dir.mkdir(parents=True)
        if opts.wheel is not None:
            shutil.copy2(opts.wheel, wheel_dir / opts.wheel.name)
        else:
            build_project_wheel(project_dir, wheel_dir)  # type: ignore[arg-type]
        download_wheels(opts, wheel_dir)

        model_name = None
        if opts.model_dir is not None:
            model_name = opts.model_name or opts.model_dir.name
            copy_model(opts.model_dir, root / "models" / model_name)
        from stt_engine.diarize.model import MODEL_DIR_NAME, model_path

        speaker_model = model_path(get_settings())
        if speaker_model is not None:  # diarization's CAM++ model, when this machine has it (make install builds it)
            copy_model(speaker_model.parent, root / "models" / MODEL_DIR_NAME)

        requirement = PROJECT_NAME + (f"[{','.join(opts.extras)}]" if opts.extras else "") + f"=={__version__}"
        install = root / "install.sh"
        install.write_text(install_script(), encoding="utf-8")
        install.chmod(0o755)
        (root / "bundle.env").write_text(render_bundle_env(requirement=requirement, model_name=model_name,
                                                           python_version=opts.python_version,
                                                           cuda_libs=opts.cuda_libs), encoding="utf-8")
        target = "current" if opts.current_platform else f"cp{opts.python_version.replace('.', '')}-{opts.platforms[0]}"
        (root / "bundle.json").write_text(json.dumps({
            "project": PROJECT_NAME,
            "version": __version__,
            "requirement": requirement,
            "model": model_name,
            "cuda_libs": opts.cuda_libs,
            "python": opts.python_version,
            "target": target,
            "built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "wheels": sorted(p.name for p in wheel_dir.glob("*.whl")),
        }, indent=2) + "\n", encoding="utf-8")
        write_checksums(root)

        partial = output.with_name(output.name + ".partial")
        with tarfile.open(partial, "w:gz" if opts.compress else "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(root, arcname=top)
        os.replace(partial, output)
    output.with_name(output.name + ".sha256").write_text(f"{sha256_file(output)}  {output.name}\n", encoding="utf-8")
    return output


def default_output_name(model_name: str | None, compress: bool) -> str:
    suffix = ".tar.gz" if compress else ".tar"
    model = f"-{model_name}" if model_name else ""
    return f"stt-engine-offline-{__version__}{model}-linux_x86_64-py{TARGET_PYTHON.replace('.', '')}{suffix}"


# --- the `bundle` subcommand ------------------------------------------------------------------------------------------

def _bundle_model(spec: str) -> Path | None:
    """`none`, `bundled`, a folder, or a name under MODELS_DIR (downloaded first when missing)."""
    if spec == "none":
        return None
    settings = get_settings()
    if spec == "bundled":
        from stt_engine.models.bundled import assemble_bundled_model

        return assemble_bundled_model(settings.model_cache_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from stt_engine.models.resolve import candidate_dirnames, is_model_dir

    for dirname in candidate_dirnames(spec):
        if is_model_dir(settings.models_dir / dirname):
            return settings.models_dir / dirname
    from stt_engine.models.download import download_model

    lookup(spec)  # a clear error for a typo before any download starts
    print(f"{spec} is not in {settings.models_dir}/: downloading it first", file=sys.stderr)
    return download_model(spec, models_dir=settings.models_dir).path


def cmd_bundle(args: argparse.Namespace) -> int:
    """Build the tarball; failures print one line (no traceback) and exit 2."""
    try:
        model_dir = _bundle_model(args.model)
        output = Path(args.output) if args.output else Path(
            default_output_name(model_dir.name if model_dir else None, args.gzip))
        opts = BundleOptions(
            model_dir=model_dir, output=output, extras=[e for e in args.extras.split(",") if e],
            python_version=(f"{sys.version_info[0]}.{sys.version_info[1]}" if args.current_platform
                            else args.python_version),
            current_platform=args.current_platform,
            project_dir=Path(args.project) if args.project else None, wheel=Path(args.wheel) if args.wheel else None,
            compress=args.gzip, include_pip=not args.no_pip, cuda_libs=args.cuda_libs,
        )
        if args.platform:
            opts.platforms = args.platform
        path = build_bundle(opts)
    except (STTError, ValueError) as exc:
        print(f"stt-engine: {getattr(exc, 'message', str(exc))}", file=sys.stderr)
        return 2
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB (sha256 in {path.name}.sha256)")
    print(f"Carry it to the server, then: tar xf {path.name} && cd stt-engine-offline-*/ && ./install.sh --start")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bundle` to the `stt-engine` command."""
    bd = subparsers.add_parser("bundle", help="build an offline install tarball (wheels + model + install.sh)",
                               description="Run on a connected machine. Default target: Linux x86_64, CPython 3.11, "
                               "glibc 2.28 (RHEL 8).")
    bd.add_argument("--model", default=DEFAULT_MODEL,
                    help="model name (downloaded if missing), folder, `bundled` (whisper base) or `none`")
    bd.add_argument("--output", "-o", default=None, help="tarball path (default stt-engine-offline-...tar)")
    bd.add_argument("--extras", default="", help="stt-engine extras to include, comma separated (e.g. bundled-model)")
    bd.add_argument("--python-version", default="3.11", help="target Python (default 3.11)")
    bd.add_argument("--platform", action="append", default=None,
                    help="target wheel platform tag, repeatable (default manylinux_2_28_x86_64 and older)")
    bd.add_argument("--current-platform", action="store_true", help="target this machine's Python and platform")
    bd.add_argument("--project", default=None, help="stt-engine source folder (default: this checkout)")
    bd.add_argument("--wheel", default=None, help="use this prebuilt stt-engine wheel")
    bd.add_argument("--gzip", action="store_true", help="compress (slow, saves little: weights don't shrink)")
    bd.add_argument("--cuda-libs", action="store_true",
                    help="also ship cuBLAS 12 + cuDNN 9 as wheels (~1.5 GB) for GPU hosts without CUDA packages")
    bd.add_argument("--no-pip", action="store_true", help="do not ship a current pip wheel")
    bd.set_defaults(func=cmd_bundle)
