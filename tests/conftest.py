"""Fixtures: one live server on the bundled model for the whole session (real model, real clips)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import SHARED_AUDIO, running_server

pytest_plugins = ["tests.llm_fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    if not (SHARED_AUDIO / "manifest.tsv").is_file():
        raise pytest.UsageError(f"test audio not found at {SHARED_AUDIO} (expected ../shared/audio beside the repo)")


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """Base URL of a real `stt-engine serve` on the bundled Whisper base model."""
    with running_server() as base:
        yield base
