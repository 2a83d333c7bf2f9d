"""`PostProcessor`: one call that turns a transcript into its correction, summary or minutes.

Its promise to the API layer is that LLM trouble never costs the caller their transcript: every
failure of the LLM server (down, slow, erroring, nonsense) comes back as an ``error`` entry in the
result dict, and the whole run is bounded by `VLLM_TIMEOUT_S`. Only caller mistakes (unknown task,
`custom` without an instruction) raise, as `InvalidRequest`, and `validate` lets routes check those
before spending time on transcription.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import KW_ONLY, dataclass, field
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any, Literal

from stt_engine.postprocess.client import LLMClient, Message
from stt_engine.postprocess.errors import (
    LLMAuthError,
    LLMContextLengthExceeded,
    LLMError,
    LLMNotConfigured,
    LLMTimeout,
    LLMUnreachable,
)
from stt_engine.postprocess.responses import Completion
from stt_engine.postprocess.tasks import (
    TaskRegistry,
    TaskSpec,
    build_messages,
    estimate_tokens,
    guess_language,
    join_parts,
    label_parts,
    messages_as_prompt,
    plan_budget,
    split_text,
    strip_reasoning,
)

if TYPE_CHECKING:
    from stt_engine.config import Settings

log = logging.getLogger(__name__)

MAX_PARALLEL_PARTS = 4  # parts of one transcript sent at once; vLLM batches them
HEALTH_TIMEOUT_S = 2.0  # /health must answer fast even when the LLM host is a black hole
HEALTH_CACHE_S = 2.0  # probes every second must not each become a request to the LLM server
_MAX_RESPLITS = 3  # how often a part the server found too long is halved again
_MAX_REDUCE_ROUNDS = 4


@dataclass
class _Run:
    """Bookkeeping for one `run`: the model that answered, token usage, warnings."""

    model: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    warnings: list[str] = field(default_factory=list)

    def record(self, completion: Completion) -> None:
        self.calls += 1
        self.model = completion.model or self.model
        usage = completion.usage or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        if completion.finish_reason == "length":
            warning = "The model stopped at VLLM_MAX_TOKENS; the result may be cut short"
            if warning not in self.warnings:
                self.warnings.append(warning)


@dataclass(eq=False)
class PostProcessor:
    """Post-processing for the API and CLI; `enabled` is False (and `run` reports so) without VLLM_BASE_URL."""

    client: LLMClient | None
    registry: TaskRegistry
    _: KW_ONLY
    timeout_s: float
    max_tokens: int
    context_tokens: int | None = None
    api: Literal["chat", "completions"] = "chat"
    _health: tuple[float, dict[str, Any]] | None = field(default=None, init=False, repr=False)
    _health_check: asyncio.Future[dict[str, Any]] | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> PostProcessor:
        """Reads the prompt templates (once, here) and prepares the client; connects to nothing yet."""
        client = LLMClient.from_settings(settings) if settings.vllm_base_url else None
        return cls(
            client,
            TaskRegistry.load(settings.prompts_dir),
            timeout_s=settings.vllm_timeout_s,
            max_tokens=settings.vllm_max_tokens,
            context_tokens=settings.vllm_context_tokens,
        )

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def tasks(self) -> list[str]:
        return self.registry.names

    def validate(self, task: str, prompt: str | None = None) -> TaskSpec:
        """Raise `InvalidRequest` for an unknown task or a missing instruction; call it before transcribing."""
        return self.registry.get(task, prompt)

    async def run(self, text: str, task: str, prompt: str | None = None, language: str | None = None) -> dict[str, Any]:
        """Process `text`; returns ``{"task", "model", "text", "error", ...}`` and never raises for LLM failures."""
        spec = self.validate(task, prompt)
        language = language or guess_language(text)
        started = time.perf_counter()
        state = _Run()
        result: dict[str, Any] = {"task": spec.name, "model": None, "text": None, "error": None}
        try:
            if not text.strip():
                result["text"] = ""
            elif self.client is None:
                raise LLMNotConfigured(
                    "Post-processing is not configured: set VLLM_BASE_URL to an OpenAI-compatible server"
                )
            else:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        result["text"] = await self._process(spec, text, prompt, language, state)
                except TimeoutError:
                    raise LLMTimeout(
                        f"Post-processing did not finish within VLLM_TIMEOUT_S={self.timeout_s:g} s"
                    ) from None
        except LLMError as exc:
            log.warning("postprocess %s failed: %s", spec.name, exc.message)
            result["error"] = exc.to_dict()
        except Exception as exc:  # a bug or a surprise must not cost the caller the transcript
            log.exception("postprocess %s failed unexpectedly", spec.name)
            result["error"] = {"code": "postprocess_failed", "message": f"{type(exc).__name__}: {exc}",
                               "upstream_status": None, "upstream_type": None}
        result["model"] = state.model or (self.client.configured_model if self.client else None)
        result.update(
            chunks=state.calls,
            usage={"prompt_tokens": state.prompt_tokens, "completion_tokens": state.completion_tokens},
            warnings=state.warnings,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return result

    async def stream(self, text: str, task: str, prompt: str | None = None,
                     language: str | None = None) -> AsyncIterator[str]:
        """Yield the result as it is generated (CLI): token by token when the text fits in one call,
        else all at once after split-and-combine. Unlike `run`, LLM failures raise `LLMError`."""
        spec = self.validate(task, prompt)
        language = language or guess_language(text)
        if self.client is None:
            raise LLMNotConfigured("Post-processing is not configured: set VLLM_BASE_URL")
        job = await self._plan(spec, prompt, language, _Run())
        if len(split_text(text, job.budget)) > 1:
            yield await self._process(spec, text, prompt, language, job.state)
            return
        request = self._request(build_messages(spec, text, language=language, instruction=prompt))
        deltas = self.client.generate(request, stream=True, max_tokens=job.max_tokens, temperature=spec.temperature)
        async for delta in deltas:
            if delta.text:
                yield delta.text

    async def health(self) -> dict[str, Any]:
        """Reachability for ``/health``: never raises, answers within ~2 s, and is cached for 2 s.

        An unconfigured LLM is reported as such, not as an error: STT health does not depend on it.
        """
        if self.client is None:
            return {"configured": False, "ok": None, "reachable": None, "model": None}
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < HEALTH_CACHE_S:
            return self._health[1]
        try:
            timeout = min(HEALTH_TIMEOUT_S, self.client.connect_timeout_s)
            report = await self.client.health(timeout_s=timeout)
        except Exception as exc:  # LLMClient.health doesn't raise; this is belt and braces for /health
            report = {"ok": False, "reachable": False, "error": {"code": "llm_error", "message": str(exc)}}
        result = {"configured": True, **report}
        self._health = (time.monotonic(), result)
        return result

    async def health_snapshot(self, wait_s: float = 0.05) -> dict[str, Any]:
        """For `/health`, which must stay fast while the LLM server is slow: a stale report starts a check in
        the background, awaited at most `wait_s`; until it ends, the last known report (or "checking") is given."""
        if self.client is None:
            return await self.health()
        fresh = self._health is not None and time.monotonic() - self._health[0] < HEALTH_CACHE_S
        if not fresh:
            if self._health_check is None or self._health_check.done():
                self._health_check = asyncio.ensure_future(self.health())
            await asyncio.wait({self._health_check}, timeout=wait_s)
        if self._health is not None:
            return self._health[1]
        return {"configured": True, "ok": None, "reachable": None, "model": None, "checking": True}

    async def aclose(self) -> None:
        if self._health_check is not None:
            self._health_check.cancel()
        if self.client is not None:
            await self.client.aclose()

    # --- the work -----------------------------------------------------------------------------------

    async def _context_tokens(self) -> int | None:
        """The model's context: from /v1/models, else VLLM_CONTEXT_TOKENS (tasks.DEFAULT_CONTEXT_TOKENS if unset)."""
        assert self.client is not None
        try:
            return await self.client.context_tokens() or self.context_tokens
        except (LLMUnreachable, LLMTimeout, LLMAuthError):
            raise
        except LLMError:
            if not self.client.configured_model:
                raise
            return self.context_tokens  # no usable /v1/models, but we know which model to ask

    async def _plan(self, spec: TaskSpec, instruction: str | None, language: str | None, state: _Run) -> _Job:
        template = spec.template_for(language)
        messages = build_messages(spec, "", language=language, instruction=instruction)
        overhead = sum(estimate_tokens(m["content"]) + 8 for m in messages)
        if template.combine:  # a [combine] call carries that template instead of [user]; count both
            overhead += estimate_tokens(template.combine)
        budget, max_tokens = plan_budget(await self._context_tokens(), self.max_tokens, spec, overhead)
        return _Job(spec, instruction, language, budget, max_tokens, state)

    async def _process(self, spec: TaskSpec, text: str, instruction: str | None, language: str | None,
                       state: _Run) -> str:
        job = await self._plan(spec, instruction, language, state)
        parts = split_text(text, job.budget)
        limit = asyncio.Semaphore(MAX_PARALLEL_PARTS)

        async def one(part: str) -> str:
            async with limit:
                return await self._call_part(job, part, _MAX_RESPLITS)

        results = list(await asyncio.gather(*(one(part) for part in parts)))
        if len(results) == 1:
            return results[0]
        if not spec.reduces(language):
            return join_parts(results)
        return await self._reduce(job, results)

    async def _reduce(self, job: _Job, results: list[str]) -> str:
        """Merge per-part results with the [combine] prompt, in rounds while they don't fit in one call."""
        for _ in range(_MAX_REDUCE_ROUNDS):
            merged_input = label_parts(results)
            groups = split_text(merged_input, job.budget)
            merged = await asyncio.gather(*(self._call(job, group, combine=True) for group in groups))
            results = [text for text, _ in merged]
            if len(results) == 1:
                return results[0]
        job.state.warnings.append("The parts' results were too long to merge into one; they are given in order")
        return join_parts(results)

    async def _call_part(self, job: _Job, part: str, resplits: int) -> str:
        """One part; halved and retried when the server says it is too long for the model after all."""
        try:
            output, finish_reason = await self._call(job, part)
        except LLMContextLengthExceeded:
            halves = split_text(part, max(16, estimate_tokens(part) // 2))
            if resplits <= 0 or len(halves) < 2:
                raise
            return join_parts([await self._call_part(job, half, resplits - 1) for half in halves])
        if job.spec.output_ratio > 0:  # a correction: the answer must stay close to its input
            return _guard_correction(part, output, finish_reason, job.state)
        return output

    def _request(self, messages: list[Message]) -> str | list[Message]:
        """What the client sends: the chat messages, or for `VLLM_API=completions` one prompt made of them."""
        return messages_as_prompt(messages) if self.api == "completions" else messages

    async def _call(self, job: _Job, text: str, *, combine: bool = False) -> tuple[str, str | None]:
        """One LLM request: (answer without reasoning, finish_reason)."""
        assert self.client is not None
        messages = build_messages(job.spec, text, language=job.language, instruction=job.instruction, combine=combine)
        completion = await self.client.generate(
            self._request(messages), max_tokens=job.max_tokens, temperature=job.spec.temperature
        )
        job.state.record(completion)
        return strip_reasoning(completion.text), completion.finish_reason


@dataclass(frozen=True)
class _Job:
    """What every LLM call of one `run` shares."""

    spec: TaskSpec
    instruction: str | None
    language: str | None
    budget: int  # input tokens per part
    max_tokens: int
    state: _Run


def _guard_correction(original: str, corrected: str, finish_reason: str | None, state: _Run) -> str:
    """Keep the original part unless the answer looks like a minimal-edit correction of it.

    A correction must never lose or invent content, so an empty or cut-off answer, one much longer than
    its input, or one that shares little of its characters with it, is dropped in favour of the input.
    """
    reason = None
    if not corrected.strip():
        reason = "returned nothing"
    elif finish_reason == "length":
        reason = "was cut off at VLLM_MAX_TOKENS"
    elif len(original) > 20:
        a, b = "".join(original.split()), "".join(corrected.split())
        if len(b) > 1.5 * len(a) + 20:
            reason = "added text"
        elif SequenceMatcher(None, a, b, autojunk=False).ratio() < 0.5:
            reason = "rewrote the text"
    if reason is None:
        return corrected
    warning = f"The correction of a part {reason}; that part is left as transcribed"
    if warning not in state.warnings:
        state.warnings.append(warning)
    return original
