"""`python -m stt_engine` is the same as the `stt-engine` command."""

from stt_engine.cli import main

raise SystemExit(main())
