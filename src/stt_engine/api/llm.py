"""The LLM step of a transcription route (`postprocess=...`): the team's glossary added, the outcome counted."""

from __future__ import annotations

from typing import Any

from stt_engine.api.services import Services
from stt_engine.types import Transcript


async def postprocess_transcript(
    services: Services, transcript: Transcript, task: str, prompt: str | None
) -> dict[str, Any]:
    """The LLM's result for `task`; a disabled post-processor answers with its own `llm_not_configured` error."""
    prompt = services.vocabulary().llm_prompt(task, prompt)
    assert services.postprocessor is not None  # the route validated the task with it
    result: dict[str, Any] = await services.postprocessor.run(transcript.text, task, prompt, transcript.language)
    services.metrics.observe_postprocess(task, result)  # asked-for and failed counts alike: an honest ratio
    return result


def validate_postprocess(services: Services, task: str | None, prompt: str | None) -> None:
    """Refuse a bad `postprocess` before any decoding (unknown task, `custom` without a prompt)."""
    if task:
        assert services.postprocessor is not None  # set for the app's whole life by its lifespan
        services.postprocessor.validate(task, prompt)
