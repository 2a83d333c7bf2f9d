"""Fixtures: one live server on the bundled model for the whole session (real model, real clips)."""

from __future__ import annotations

from collections.abc import Iterator

import pluggy
import pytest

from tests.support import HAVE_FULL_AUDIO, NO_FULL_AUDIO, SHARED_AUDIO, missing_clip, running_server

pytest_plugins = ["tests.llm_fixtures"]


def pytest_report_header(config: pytest.Config) -> str:
    if HAVE_FULL_AUDIO:
        return f"test audio: {SHARED_AUDIO} (full set)"
    return f"test audio: {SHARED_AUDIO} (in-repo clips; tests needing ../shared/audio are skipped)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    _skip_for_missing_clip(outcome)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    _skip_for_missing_clip(outcome)


def _skip_for_missing_clip(outcome: pluggy.Result[None]) -> None:
    """A clip only ../shared/audio has, opened in a plain clone: a skip that names it, not a failure."""
    error = outcome.excinfo[1] if outcome.excinfo else None
    name = missing_clip(error) if error is not None else None
    if name is not None:
        outcome.force_exception(pytest.skip.Exception(f"{NO_FULL_AUDIO}: {name}", _use_item_location=True))


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """Base URL of a real `stt-engine serve` on the bundled Whisper base model."""
    with running_server() as base:
        yield base
