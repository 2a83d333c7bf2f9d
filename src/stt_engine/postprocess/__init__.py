"""Post-processing transcripts with an OpenAI-compatible LLM server (vLLM first; llama.cpp, TGI, OpenAI).

`PostProcessor` is what the API and CLI use; `LLMClient` is the wire-level client underneath it.
"""

from stt_engine.postprocess.client import LLMClient, normalize_base_url
from stt_engine.postprocess.errors import (
    LLMAuthError,
    LLMBadRequest,
    LLMContextLengthExceeded,
    LLMError,
    LLMModelNotFound,
    LLMNotConfigured,
    LLMRateLimited,
    LLMResponseError,
    LLMServerError,
    LLMTimeout,
    LLMUnreachable,
)
from stt_engine.postprocess.responses import Completion, ModelInfo, StreamDelta
from stt_engine.postprocess.service import PostProcessor

__all__ = [
    "Completion",
    "LLMAuthError",
    "LLMBadRequest",
    "LLMClient",
    "LLMContextLengthExceeded",
    "LLMError",
    "LLMModelNotFound",
    "LLMNotConfigured",
    "LLMRateLimited",
    "LLMResponseError",
    "LLMServerError",
    "LLMTimeout",
    "LLMUnreachable",
    "ModelInfo",
    "PostProcessor",
    "StreamDelta",
    "normalize_base_url",
]
