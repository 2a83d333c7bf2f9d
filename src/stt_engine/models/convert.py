"""`stt-engine convert SRC DEST`: turn a Transformers Whisper checkpoint into a CTranslate2 model folder.

Used when a site fine-tuned Whisper, or only has the original `openai/whisper-*` checkpoint on disk. The converter
needs PyTorch and Transformers, which the server never does, so they live in the optional `convert` extra
(`pip install 'stt-engine[convert]'`) and are imported only here.

The output is written to a hidden staging folder, gets a `manifest.json`, and is renamed into place last: an
interrupted conversion leaves nothing the server would load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from stt_engine.errors import STTError
from stt_engine.models.verify import write_manifest

Quantization = Literal["float16", "int8_float16", "int8", "float32", "bfloat16", "int8_bfloat16", "int8_float32"]
QUANTIZATIONS: tuple[str, ...] = ("float16", "int8_float16", "int8", "float32", "bfloat16", "int8_bfloat16",
                                  "int8_float32")
# Copied next to model.bin when the checkpoint has them: faster-whisper reads the tokenizer and the feature size.
COPY_FILES: tuple[str, ...] = ("tokenizer.json", "preprocessor_config.json")


class ConvertError(STTError):
    code = "convert_failed"


def _converter_class() -> Any:
    """CTranslate2's Transformers converter, or a `ConvertError` saying which extra to install."""
    try:
        import transformers  # noqa: F401  (the converter imports it lazily and fails late without it)
        from ctranslate2.converters import TransformersConverter
    except ImportError as exc:
        raise ConvertError(
            f"Converting needs PyTorch and Transformers ({exc.name} is missing): "
            "`pip install 'stt-engine[convert]'` on the machine that converts (the server does not need them)."
        ) from exc
    return TransformersConverter


def convert_model(src: str, dest: Path, *, quantization: str = "float16", force: bool = False,
                  local_only: bool = True) -> Path:
    """Convert checkpoint `src` (a folder, or a hub id when `local_only=False`) into `dest` with a manifest."""
    if quantization not in QUANTIZATIONS:
        raise ConvertError(f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    src_path = Path(src).expanduser()
    if local_only and not src_path.is_dir():
        raise ConvertError(
            f"{src} is not a folder. Give the path of a Transformers checkpoint on disk (e.g. a clone of "
            "openai/whisper-large-v3-turbo), or pass --allow-download to fetch a hub id."
        )
    if src_path.is_dir() and not (src_path / "config.json").is_file():
        raise ConvertError(f"{src_path} has no config.json: not a Transformers checkpoint")
    dest = Path(dest)
    if dest.exists() and not force:
        raise ConvertError(f"{dest} already exists; pass --force to replace it")

    converter_cls = _converter_class()
    source = str(src_path) if src_path.is_dir() else src
    copy_files = [name for name in COPY_FILES if not src_path.is_dir() or (src_path / name).is_file()]
    if src_path.is_dir() and "tokenizer.json" not in copy_files:
        raise ConvertError(f"{src_path} has no tokenizer.json, which faster-whisper needs next to model.bin")

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.converting-", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        converter = converter_cls(source, copy_files=copy_files or None, load_as_float16=quantization != "float32")
        converter.convert(str(staging), quantization=quantization, force=True)
        write_manifest(staging, name=dest.name,
                       source={"type": "converted", "from": source, "quantization": quantization})
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError(f"conversion of {source} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest
