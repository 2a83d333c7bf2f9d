"""`POST /v1/postprocess`: post-process text the caller already has (no audio).

Same result shape as the ``postprocess`` key of `/transcribe`, and the same promise: an LLM failure is a
200 with ``error`` set, so clients handle one shape; only caller mistakes are 4xx. A server with no LLM
configured (no VLLM_BASE_URL) answers 503: this route does nothing else, so there is no partial result to give.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from stt_engine.api.schemas import PostprocessResult
from stt_engine.api.services import PostProcessorDep
from stt_engine.errors import STTError

MAX_TEXT_CHARS = 1_000_000  # about 10 hours of speech; bounds memory and LLM time per request

router = APIRouter(tags=["postprocess"])


class PostprocessRequest(BaseModel):
    """The text and what to do with it."""

    text: str = Field(..., max_length=MAX_TEXT_CHARS, description="The transcript to process.")
    task: str = Field(..., max_length=40, description="correct, summarize, minutes, custom (or a PROMPTS_DIR task).")
    prompt: str | None = Field(None, max_length=4000, description="The instruction; required for `custom`.")
    language: str | None = Field(None, max_length=16, description="Language code of the text, e.g. `ko`.")


@router.post(
    "/v1/postprocess", response_model=PostprocessResult,
    responses={503: {"description": "No LLM server is configured (VLLM_BASE_URL), or the server is starting."}},
)
async def postprocess(body: PostprocessRequest, processor: PostProcessorDep) -> dict[str, Any]:
    """Correct, summarize or turn into minutes a transcript sent as text."""
    if not processor.enabled:
        raise STTError(
            "Post-processing is not configured on this server: set VLLM_BASE_URL to an OpenAI-compatible LLM server.",
            code="llm_not_configured", status=503,
        )
    return await processor.run(body.text, body.task, body.prompt, body.language)
