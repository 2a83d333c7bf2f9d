"""HTTP API: the original `/transcribe` contract and the OpenAI audio API, on one FastAPI app."""

from stt_engine.api.app import create_app

__all__ = ["create_app"]
