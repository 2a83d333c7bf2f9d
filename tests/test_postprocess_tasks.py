"""Task templates, splitting and budgeting: pure functions, no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from stt_engine.errors import InvalidRequest
from stt_engine.postprocess.tasks import (
    TaskRegistry,
    Template,
    build_messages,
    estimate_tokens,
    guess_language,
    plan_budget,
    render,
    split_text,
    strip_reasoning,
)


def test_shipped_tasks_and_korean_variants() -> None:
    registry = TaskRegistry.load()
    assert registry.names == ["correct", "custom", "minutes", "summarize"]
    for name in registry.names:
        spec = registry.get(name, "do it")
        assert "ko" in spec.by_language, f"{name} has no Korean template"
    assert registry.get("summarize", None).reduces() and registry.get("minutes", None).reduces("ko")
    assert not registry.get("correct", None).reduces("ko")
    korean = build_messages(registry.get("correct", None), "안녕 하세요", language="ko", instruction=None)
    assert "띄어쓰기" in korean[0]["content"] and korean[-1]["content"].endswith("안녕 하세요")
    english = build_messages(registry.get("correct", None), "hello", language="en", instruction=None)
    assert "띄어쓰기" not in english[0]["content"] and "English" in english[0]["content"]


def test_caller_mistakes_are_invalid_requests() -> None:
    registry = TaskRegistry.load()
    with pytest.raises(InvalidRequest, match="Unknown postprocess task"):
        registry.get("translate", None)
    with pytest.raises(InvalidRequest, match="needs an instruction"):
        registry.get("custom", None)
    with pytest.raises(InvalidRequest, match="needs an instruction"):
        registry.get("custom", "   ")
    assert registry.get(" Summarize ", None).name == "summarize"


def test_placeholders_are_filled_once_and_braces_survive() -> None:
    filled = render('{"json": 1} {language}: {text}', text="say {instruction} {text}", language="ko", instruction="X")
    assert filled == '{"json": 1} Korean (한국어): say {instruction} {text}'


def test_custom_instruction_goes_into_the_system_prompt() -> None:
    spec = TaskRegistry.load().get("custom", "List the names mentioned.")
    messages = build_messages(spec, "Alice met Bob.", language="en", instruction="List the names mentioned.")
    assert "List the names mentioned." in messages[0]["content"]
    extra = build_messages(TaskRegistry.load().get("summarize", None), "t", language="en", instruction="In 3 bullets")
    assert "In 3 bullets" in extra[0]["content"]


def test_template_sections() -> None:
    template = Template.parse("[system]\nS {language}\n[user]\nU {text}\n[combine]\nC {text}\n")
    assert (template.system, template.user, template.combine) == ("S {language}", "U {text}", "C {text}")
    assert Template.parse("just {text}").user == "just {text}"
    with pytest.raises(ValueError):
        Template.parse("[system]\nno user section")


def test_prompts_dir_overrides_and_adds_tasks(tmp_path: Path) -> None:
    (tmp_path / "summarize.txt").write_text("[user]\nTL;DR:\n\n{text}\n", encoding="utf-8")
    (tmp_path / "translate.txt").write_text("[system]\nTranslate to {instruction}.\n[user]\nGo.\n\n{text}\n")
    (tmp_path / "notes.txt.bak").write_text("ignored")
    registry = TaskRegistry.load(tmp_path)
    assert "translate" in registry.names
    assert registry.get("translate", "French").needs_instruction
    assert registry.get("summarize", None).template.user.startswith("TL;DR:")
    assert not registry.get("summarize", None).reduces("en")  # the override has no [combine]
    with pytest.raises(ValueError):
        TaskRegistry.load(tmp_path / "missing")


def test_split_keeps_every_word_in_order() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(200)) + " 마지막 문장입니다."
    parts = split_text(text, 60)
    assert len(parts) > 5
    assert all(estimate_tokens(part) <= 60 for part in parts)
    assert " ".join(parts).split() == text.split()


def test_split_unpunctuated_korean_and_one_long_word() -> None:
    text = "가나다라마바사아자차카타파하" * 30
    parts = split_text(text, 40)
    assert "".join(parts) == text and all(estimate_tokens(p) <= 40 for p in parts)
    assert split_text("short text", 100) == ["short text"]


def test_budget_leaves_room_for_the_answer() -> None:
    registry = TaskRegistry.load()
    summarize, correct = registry.get("summarize", None), registry.get("correct", None)
    budget, out = plan_budget(4096, 1024, summarize, 200)
    assert out == 1024 and budget + out + 200 <= 4096
    budget, out = plan_budget(4096, 1024, correct, 200)
    assert budget <= 1024  # a correction is as long as its input
    budget, out = plan_budget(512, 1024, summarize, 100)
    assert out == 256 and budget > 0  # a small model still gets input
    assert plan_budget(None, 100, summarize, 0)[0] > 4000  # unknown context: the default


def test_reasoning_is_stripped_and_language_guessed() -> None:
    assert strip_reasoning("<think>hmm\nok</think>\nAnswer.") == "Answer."
    assert strip_reasoning("thinking...</think>Answer") == "Answer"
    assert guess_language("오늘 회의에서는 API 일정을 논의했습니다") == "ko"
    assert guess_language("We discussed the API schedule") is None
