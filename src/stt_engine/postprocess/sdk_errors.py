"""The `openai` SDK's exceptions as our `LLMError`s: one message a person can act on, naming the setting to check.

The SDK raises its own types for HTTP errors (whose body our `errors.error_from_response` parses, vLLM's envelopes
included), timeouts, broken connections and error events inside a 200 stream; the size cap of `transport` arrives
wrapped in one of them.
"""

from __future__ import annotations

import openai

from stt_engine.postprocess.errors import (
    LLMError,
    LLMResponseError,
    LLMTimeout,
    LLMUnreachable,
    error_from_response,
    extract_error,
)
from stt_engine.postprocess.transport import ResponseTooLarge


def error_from_sdk(exc: BaseException, url: str, *, limit_s: float, connect_timeout_s: float) -> LLMError:
    """Our `LLMError` for whatever the SDK (or a time budget of `limit_s` seconds) raised for a request to `url`."""
    cause: BaseException | None = exc
    while cause is not None:  # the size cap, however deep the SDK wrapped it
        if isinstance(cause, ResponseTooLarge):
            return LLMResponseError(
                f"{url} sent more than {cause.limit} bytes; the response was dropped (VLLM_MAX_RESPONSE_BYTES)"
            )
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, openai.APIStatusError):
        # The SDK has read the body: our parser knows vLLM's envelopes and names the setting to check.
        response = exc.response
        return error_from_response(response.status_code, response.content, url)
    if isinstance(exc, openai.APITimeoutError) and type(exc.__cause__).__name__ == "ConnectTimeout":
        return LLMUnreachable(f"Could not connect to the LLM server at {url} within {connect_timeout_s:g} s")
    if isinstance(exc, (openai.APITimeoutError, TimeoutError)):
        return LLMTimeout(f"The LLM server at {url} did not answer within {limit_s:g} s")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        reason = (str(cause) or type(cause).__name__) if cause is not None else exc.message
        return LLMUnreachable(f"Could not reach the LLM server at {url}: {reason}")
    if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
        message, kind = extract_error({"error": exc.body}) if exc.body is not None else (exc.message, None)
        return LLMResponseError(f"LLM server failed mid-stream: {message or exc.message}", upstream_type=kind)
    return LLMResponseError(f"{url}: unexpected answer ({type(exc).__name__}: {exc})")
