"""`stt-engine convert`: clear errors without the `convert` extra, and a verified folder (or nothing) as the result.

PyTorch and Transformers are not installed in the test environment (they are the optional `convert` extra), so the
CTranslate2 converter is replaced by a fake that writes what the real one writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from stt_engine.models import convert as cv
from stt_engine.models.verify import read_manifest, verify_model_dir


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    src = tmp_path / "whisper-tiny-hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (src / "tokenizer.json").write_text("{}")
    (src / "preprocessor_config.json").write_text(json.dumps({"feature_size": 80}))
    return src


class FakeConverter:
    """Mimics ctranslate2.converters.TransformersConverter: model.bin + config + the copied files."""

    fail = False

    def __init__(self, source: str, copy_files: list[str] | None = None, load_as_float16: bool = False) -> None:
        self.source, self.copy_files = Path(source), copy_files or []

    def convert(self, output_dir: str, quantization: str | None = None, force: bool = False) -> str:
        out = Path(output_dir)
        (out / "model.bin").write_bytes(b"weights-" + (quantization or "").encode())
        if self.fail:
            raise RuntimeError("out of memory")
        (out / "config.json").write_text("{}")
        (out / "vocabulary.json").write_text("[]")
        for name in self.copy_files:
            (out / name).write_bytes((self.source / name).read_bytes())
        return output_dir


def test_missing_extra_says_what_to_install(checkpoint: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as on a server without the [convert] extra
    with pytest.raises(cv.ConvertError, match=r"stt-engine\[convert\]"):
        cv.convert_model(str(checkpoint), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_conversion_writes_a_verified_folder(checkpoint: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv, "_converter_class", lambda: FakeConverter)
    dest = cv.convert_model(str(checkpoint), tmp_path / "models" / "my-tiny", quantization="int8_float16")
    assert verify_model_dir(dest).ok
    manifest = read_manifest(dest)
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= set(manifest["files"])
    assert manifest["source"]["quantization"] == "int8_float16"
    assert [p.name for p in dest.parent.iterdir()] == ["my-tiny"]


def test_failed_conversion_leaves_nothing(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing(FakeConverter):
        fail = True

    monkeypatch.setattr(cv, "_converter_class", lambda: Failing)
    with pytest.raises(cv.ConvertError, match="out of memory"):
        cv.convert_model(str(checkpoint), tmp_path / "models" / "my-tiny")
    assert list((tmp_path / "models").iterdir()) == []


def test_bad_inputs_are_refused(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv, "_converter_class", lambda: FakeConverter)
    with pytest.raises(cv.ConvertError, match="unknown quantization"):
        cv.convert_model(str(checkpoint), tmp_path / "o", quantization="int4")
    with pytest.raises(cv.ConvertError, match="not a folder"):
        cv.convert_model("openai/whisper-tiny", tmp_path / "o")
    (checkpoint / "tokenizer.json").unlink()
    with pytest.raises(cv.ConvertError, match="tokenizer.json"):
        cv.convert_model(str(checkpoint), tmp_path / "o")
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(cv.ConvertError, match="--force"):
        cv.convert_model(str(checkpoint), existing)
