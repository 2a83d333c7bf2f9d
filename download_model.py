#!/usr/bin/env python3
"""Download a Whisper model for stt-engine: `python download_model.py [NAME] [--dest DIR]`.

Kept for users of the original project; it is exactly `stt-engine download` (default large-v3-turbo into
models/openai_whisper-large-v3-turbo/, with a manifest.json). It runs from a source checkout without installing
stt-engine itself, but it needs stt-engine's Python dependencies (pydantic-settings, huggingface_hub, ...):
run it with the project's virtualenv (`make install`, then `.venv/bin/python download_model.py`), or after
`pip install -e .`. Under a bare `python3` it says which package is missing instead of failing with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _main() -> int:
    try:
        from stt_engine.cli import main
    except ModuleNotFoundError as exc:
        src = str(Path(__file__).resolve().parent / "src")
        if exc.name and exc.name.split(".")[0] == "stt_engine" and src not in sys.path:
            sys.path.insert(0, src)  # a plain checkout: use src/ directly
            return _main()
        print(
            f"download_model.py: the Python package '{exc.name}' is missing. It needs stt-engine's dependencies:\n"
            "  make install && .venv/bin/python download_model.py ...   (or: pip install -e . in a virtualenv)",
            file=sys.stderr,
        )
        return 2
    return main(["download", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(_main())
