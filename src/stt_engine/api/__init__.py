"""HTTP API: the original `/transcribe` contract and the OpenAI audio API, on one FastAPI app.

Where things are: `app` (the factory and its lifespan), `services` (the typed `Services` every route gets through
`Depends`), `forms` (the form fields, grouped, and their parsers), `routes` / `jobs_routes` / `diarization` /
`postprocess_routes` / `realtime_routes` (the routes), `uploads` → `admission` → `transcription` (a file's path:
stored, admitted and decoded, transcribed), `streaming` (the same as Server-Sent Events, with `channel_merge` for
channels=split), `llm` (the post-processing step), `responses` (the replies) and `schemas` (their models, on the
`openai` SDK's types), `security`, `middleware`, `server` (uvicorn's protocol), `errors`, `web`.
"""

from stt_engine.api.app import create_app

__all__ = ["create_app"]
