"""Fixtures: one live server on the bundled model for the whole session (real model, real clips); the tiers.

Tiers (markers registered in pyproject.toml), set here from what a test uses, so a new test lands in the right one
without a hand-kept list:
* `e2e`: starts, or uses, a real `stt-engine serve` (or worker) on the real model: the `server` fixture,
  `running_server`/`shared_server` (unless `engine="fake"`), jobs_support's `start_server`/`start_worker`,
  test_shutdown's `server_process`;
* `model`: loads a model in the test process (Whisper through `Engine`/`load_engine`/`WhisperModel`, or the
  SmolLM2 LLM through `llama_server`/`start_llama_server`); every `e2e` test is also `model`.
`make test-fast` runs `-m "not model and not e2e and not slow"` with STT_TESTS_NO_MODEL=1, under which loading a
Whisper model or starting a real-model server or worker fails the test that did it, so a mis-tiered test shows up
at once. docs/testing.md has the rules (which server a test gets, no timing bounds, missing inputs skip).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy
import pytest

from tests.support import (
    HAVE_FULL_AUDIO,
    NO_FULL_AUDIO,
    REAL_MODEL_OFF,
    SHARED_AUDIO,
    app_client,
    missing_clip,
    shared_server,
    stop_shared_servers,
)

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

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
def itn_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where NeMo's compiled grammars go for the session: the `server` and test_numbers build them once."""
    return tmp_path_factory.mktemp("itn-cache")


@pytest.fixture(scope="session")
def server(itn_cache_dir: Path) -> str:
    """Base URL of a real `stt-engine serve` on the bundled Whisper base model (shared by every module that needs
    only the default behaviour; NORMALIZE_CACHE_DIR is a cache location, not a behaviour)."""
    return shared_server({"NORMALIZE_CACHE_DIR": str(itn_cache_dir)})


@pytest.fixture(scope="session")
def fake_server() -> str:
    """Base URL of a real `serve` process (uvicorn, logging, middleware) on `FakeEngine`: no model loaded."""
    return shared_server(engine="fake")


@pytest.fixture(scope="session")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app in-process on `FakeEngine` with default settings (no model, no socket)."""
    with app_client(tmp_path_factory.mktemp("app")) as test_client:
        yield test_client


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_shared_servers()


# a call that starts a real-model server process (engine="fake" ones load nothing)
_STARTS_SERVER = re.compile(
    r"\b(running_server|shared_server|start_server|start_worker|server_process)\((?![^()]*\"fake\")"
)
_LOADS_MODEL = re.compile(r"\b(Engine|load_engine|WhisperModel|start_llama_server)\(")
_MODEL_FIXTURES = {"server", "llama_server"}


def _source(func: Callable[..., object]) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `e2e`/`model` from the test's own code and its fixtures' code (see the module docstring)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        funcs = [getattr(item, "function", None)]
        if info is not None:
            funcs += [d.func for defs in info.name2fixturedefs.values() for d in defs]
        sources = [_source(f) for f in funcs if f is not None]
        e2e = "server" in getattr(item, "fixturenames", ()) or any(_STARTS_SERVER.search(s) for s in sources)
        if e2e:
            item.add_marker(pytest.mark.e2e)
        if e2e or _MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or any(
            _LOADS_MODEL.search(s) for s in sources
        ):
            item.add_marker(pytest.mark.model)
    # under pytest-xdist (`make test`) whole files go to whichever worker is free: the long ones first, so a run does
    # not end with one worker on a long file while the other has nothing left
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(autouse=True, scope="session")
def _no_model_in_fast_tier() -> Iterator[None]:
    """Under STT_TESTS_NO_MODEL (make test-fast) loading a Whisper model in-process is an error."""
    if not os.environ.get(REAL_MODEL_OFF):
        yield
        return
    import faster_whisper

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{REAL_MODEL_OFF} is set (the no-model tier) but a test loaded a Whisper model; mark it")

    original = faster_whisper.WhisperModel.__init__
    faster_whisper.WhisperModel.__init__ = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        faster_whisper.WhisperModel.__init__ = original  # type: ignore[method-assign]
