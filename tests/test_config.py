"""Every setting has one home: the Settings object, documented in .env.example and docs/operations-and-settings.md."""

from __future__ import annotations

import pytest

from stt_engine.config import Settings
from tests.support import REPO


def _env_names() -> list[str]:
    return [name.upper() for name in Settings.model_fields]


def test_env_example_lists_every_setting() -> None:
    text = (REPO / ".env.example").read_text()
    missing = [n for n in _env_names() if f"\n{n}=" not in text]
    assert not missing, missing


def test_settings_doc_documents_every_setting() -> None:
    text = (REPO / "docs" / "operations-and-settings.md").read_text(encoding="utf-8")
    missing = [n for n in _env_names() if f"| `{n}` |" not in text]
    assert not missing, f"add a row for each to the settings table in docs/operations-and-settings.md: {missing}"


def test_env_example_parses_to_defaults(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text((REPO / ".env.example").read_text())
    assert Settings() == Settings(_env_file=None)


def test_lists_from_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "a, b,,c")
    assert Settings(_env_file=None).api_keys == ["a", "b", "c"]
