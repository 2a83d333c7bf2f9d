"""Post-processing tasks: their prompt templates, and how a long transcript is split and recombined.

Templates are plain text files so that wording can be tuned per deployment without code changes:
the shipped ones live in ``stt_engine/prompts/``; a file of the same name in ``PROMPTS_DIR`` replaces
one, and any other ``NAME.txt`` there adds a task called NAME. ``NAME.LANG.txt`` (e.g.
``correct.ko.txt``) is used instead of ``NAME.txt`` for transcripts in that language: Korean gets
prompts written in Korean, and other languages are not confused by Korean-specific rules.

A template has up to three sections, each starting with a line ``[system]``, ``[user]`` or
``[combine]`` (a file with no section line is all ``[user]``). ``{text}``, ``{language}`` and
``{instruction}`` are replaced; other braces are left alone, so templates may show JSON.
``[combine]`` is the user message that merges per-part results when a transcript had to be split;
a task without it (like ``correct``) has its parts' results joined in order.

Everything here is synchronous and pure except `TaskRegistry.load`, which reads files once at
start-up, so nothing blocks the event loop while serving.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from stt_engine.errors import InvalidRequest

DEFAULT_CONTEXT_TOKENS = 8192
MAX_INSTRUCTION_CHARS = 4000
_SECTION = re.compile(r"^\[(system|user|combine)\][ \t]*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{(text|language|instruction)\}")
_TEMPLATE_FILE = re.compile(r"^(?P<task>[a-z0-9][a-z0-9_-]{0,39})(?:\.(?P<lang>[a-z]{2,3}))?\.txt$")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
# Sentence ends (Latin and CJK punctuation) or line breaks: where a transcript can be cut cleanly.
_SENTENCE = re.compile(r"[^\n.!?。！？…]*(?:[.!?。！？…]+[\"'”’)\]]*|\n+|$)\s*")
_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)

LANGUAGE_NAMES = {
    "ko": "Korean (한국어)",
    "en": "English",
    "ja": "Japanese (日本語)",
    "zh": "Chinese (中文)",
    "es": "Spanish",
    "fr": "French",
    "de": "German",
    "vi": "Vietnamese",
    "ru": "Russian",
}


@dataclass(frozen=True)
class Template:
    """A parsed prompt file."""

    system: str
    user: str
    combine: str | None = None

    @classmethod
    def parse(cls, source: str) -> Template:
        parts = _SECTION.split(source)
        sections: dict[str, str] = {}
        if parts[0].strip():
            sections["user"] = parts[0].strip()
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            sections[name] = body.strip()
        if "{text}" not in sections.get("user", ""):
            raise ValueError("a prompt template needs {text} in its [user] section")
        return cls(sections.get("system", ""), sections["user"], sections.get("combine") or None)


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs besides its template.

    `output_ratio` is the expected output length per input token: a correction is as long as its
    input (so a part must fit in `max_tokens` too), a summary much shorter (0 = no such limit).
    """

    name: str
    template: Template
    needs_instruction: bool = False
    output_ratio: float = 0.0
    temperature: float | None = None
    by_language: dict[str, Template] = field(default_factory=dict)

    def template_for(self, language: str | None) -> Template:
        """The language's own template when there is one, else the generic one."""
        if language:
            return self.by_language.get(language.lower().split("-")[0], self.template)
        return self.template

    def reduces(self, language: str | None = None) -> bool:
        """Parts are merged by another LLM call (summaries), rather than joined in order (corrections)."""
        return self.template_for(language).combine is not None


# Built-in behaviour; the wording lives in the template files.
_BUILTIN: dict[str, dict[str, Any]] = {
    "correct": {"output_ratio": 1.2, "temperature": 0.0},
    "summarize": {},
    "minutes": {},
    "custom": {"needs_instruction": True},
}


def language_name(language: str | None) -> str:
    """How templates name the transcript's language; unknown codes pass through."""
    if not language:
        return "the same language as the transcript"
    return LANGUAGE_NAMES.get(language.lower().split("-")[0], language)


def render(template: str, *, text: str, language: str | None, instruction: str | None) -> str:
    """Fill placeholders in one pass, so a transcript that contains ``{text}`` stays as it is."""
    values = {"text": text, "language": language_name(language), "instruction": (instruction or "").strip()}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def build_messages(
    spec: TaskSpec, text: str, *, language: str | None, instruction: str | None, combine: bool = False
) -> list[dict[str, str]]:
    """Chat messages for one LLM call: a part of the transcript, or (`combine`) the parts' results."""
    template = spec.template_for(language)
    user_template = template.combine if combine and template.combine else template.user
    system = render(template.system, text="", language=language, instruction=instruction)
    uses_instruction = "{instruction}" in template.system or "{instruction}" in user_template
    if instruction and instruction.strip() and not uses_instruction:
        system = (system + "\n\n" if system else "") + f"Additional instructions from the user:\n{instruction.strip()}"
    messages = [{"role": "system", "content": system}] if system else []
    user = render(user_template, text=text, language=language, instruction=instruction)
    messages.append({"role": "user", "content": user})
    return messages


def messages_as_prompt(messages: list[dict[str, str]]) -> str:
    """A plain-text rendering for ``/v1/completions`` (models without a chat template)."""
    lines = [m["content"] for m in messages]
    return "\n\n".join(lines) + "\n\n"


def guess_language(text: str) -> str | None:
    """'ko' when Hangul makes up a good part of the letters; used only when the caller gave no language."""
    letters = sum(1 for ch in text[:2000] if ch.isalpha())
    return "ko" if letters and len(_HANGUL.findall(text[:2000])) / letters > 0.3 else None


def estimate_tokens(text: str) -> int:
    """A tokenizer-free, deliberately high estimate: ~3 ASCII characters or 1 other character per token.

    Korean syllables cost 0.5-1.5 tokens depending on the tokenizer; erring high only makes parts
    smaller, and a part the server still rejects as too long is split again (see the service).
    """
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return math.ceil(ascii_chars / 3 + (len(text) - ascii_chars) * 1.1)


def strip_reasoning(text: str) -> str:
    """Drop ``<think>...</think>`` that reasoning models put in the answer when no parser is configured."""
    text = _THINK.sub("", text)
    if "</think>" in text:  # an opening tag sent in the prompt's template
        text = text.split("</think>", 1)[1]
    return text.strip()


def plan_budget(context_tokens: int | None, max_tokens: int, spec: TaskSpec, overhead_tokens: int) -> tuple[int, int]:
    """(input tokens per part, max_tokens per call) for a model with `context_tokens` of context.

    The answer's room (`max_tokens`) is taken from the context first, capped at half of it so a
    small model still gets some input; 10% is kept back for the estimate's error and chat tokens.
    """
    context = context_tokens or DEFAULT_CONTEXT_TOKENS
    out_tokens = max(16, min(max_tokens, context // 2))
    budget = int((context - out_tokens - overhead_tokens) * 0.9)
    if spec.output_ratio > 0:
        budget = min(budget, int(out_tokens / spec.output_ratio))
    return max(budget, 32), out_tokens


def _split_long(unit: str, budget: int) -> list[str]:
    """Cut a run without sentence ends: at spaces, or (no spaces, e.g. unspaced Korean) anywhere."""
    pieces: list[str] = []
    current = ""
    for word in re.findall(r"\S+\s*|\s+", unit):
        if estimate_tokens(word) > budget:
            step = max(1, int(budget / 1.1))  # non-ASCII characters count 1.1 tokens each
            pieces.extend(word[i : i + step] for i in range(0, len(word), step))
            continue
        if current and estimate_tokens(current + word) > budget:
            pieces.append(current)
            current = ""
        current += word
    if current:
        pieces.append(current)
    return pieces or [unit]


def split_text(text: str, budget_tokens: int) -> list[str]:
    """Split `text` into parts of at most `budget_tokens` (estimated), at sentence ends where possible.

    Joining the parts gives back the text exactly, apart from whitespace at part edges.
    """
    if estimate_tokens(text) <= budget_tokens:
        return [text.strip()]
    units: list[str] = []
    for match in _SENTENCE.finditer(text):
        unit = match.group(0)
        if not unit:
            continue
        units.extend(_split_long(unit, budget_tokens) if estimate_tokens(unit) > budget_tokens else [unit])
    parts: list[str] = []
    current = ""
    for unit in units:
        if current and estimate_tokens(current + unit) > budget_tokens:
            parts.append(current)
            current = ""
        current += unit
    if current.strip():
        parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def join_parts(results: list[str]) -> str:
    """Results of a join task, in order."""
    return "\n".join(result.strip() for result in results if result.strip())


def label_parts(results: list[str]) -> str:
    """Results of the parts, numbered, as the input of a [combine] call."""
    total = len(results)
    return "\n\n".join(f"[Part {i}/{total}]\n{result.strip()}" for i, result in enumerate(results, 1))


class TaskRegistry:
    """The tasks this server offers, with their templates loaded once."""

    def __init__(self, tasks: dict[str, TaskSpec]) -> None:
        self._tasks = dict(tasks)

    @classmethod
    def load(cls, prompts_dir: Path | None = None) -> TaskRegistry:
        """Shipped templates, then overrides and extra tasks from `prompts_dir` (a missing folder is an error)."""
        sources: dict[tuple[str, str | None], str] = {}
        shipped = resources.files("stt_engine") / "prompts"
        for entry in shipped.iterdir():
            match = _TEMPLATE_FILE.match(entry.name)
            if match and match["task"] in _BUILTIN:
                sources[(match["task"], match["lang"])] = entry.read_text(encoding="utf-8")
        if prompts_dir is not None:
            folder = Path(prompts_dir)
            if not folder.is_dir():
                raise ValueError(f"PROMPTS_DIR {folder} is not a folder")
            for path in sorted(folder.iterdir()):
                match = _TEMPLATE_FILE.match(path.name)
                if match and path.is_file():
                    sources[(match["task"], match["lang"])] = path.read_text(encoding="utf-8")
        tasks: dict[str, TaskSpec] = {}
        for name in sorted({task for task, _ in sources}):
            if (name, None) not in sources:
                raise ValueError(f"prompt template {name!r} has language variants but no generic {name}.txt")
            parsed: dict[str | None, Template] = {}
            for (task, lang), source in sources.items():
                if task == name:
                    try:
                        parsed[lang] = Template.parse(source)
                    except ValueError as exc:
                        raise ValueError(f"prompt template {task}{'.' + lang if lang else ''}: {exc}") from exc
            options = dict(_BUILTIN.get(name, {}))
            options.setdefault("needs_instruction", any("{instruction}" in sources[k] for k in sources if k[0] == name))
            generic = parsed.pop(None)
            by_language = {lang: template for lang, template in parsed.items() if lang}
            tasks[name] = TaskSpec(name=name, template=generic, by_language=by_language, **options)
        return cls(tasks)

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)

    def get(self, task: str, instruction: str | None) -> TaskSpec:
        """The task named `task`, or `InvalidRequest` saying what the caller got wrong."""
        spec = self._tasks.get((task or "").strip().lower())
        if spec is None:
            raise InvalidRequest(
                f"Unknown postprocess task {task!r}; choose one of: {', '.join(self.names)}", param="postprocess"
            )
        if spec.needs_instruction and not (instruction and instruction.strip()):
            raise InvalidRequest(
                f"The {spec.name!r} postprocess task needs an instruction in postprocess_prompt",
                param="postprocess_prompt",
            )
        if instruction and len(instruction) > MAX_INSTRUCTION_CHARS:
            raise InvalidRequest(
                f"postprocess_prompt is longer than {MAX_INSTRUCTION_CHARS} characters", param="postprocess_prompt"
            )
        return spec
