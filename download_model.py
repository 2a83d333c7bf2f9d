#!/usr/bin/env python3
"""Download a Whisper model for stt-engine: `python download_model.py [NAME] [--dest DIR]`.

Kept for users of the original project; it is exactly `stt-engine download` (default large-v3-turbo into
models/openai_whisper-large-v3-turbo/, with a manifest.json). Works from a source checkout without installing.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from stt_engine.cli import main
except ImportError:  # a plain checkout: use src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from stt_engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["download", *sys.argv[1:]]))
