"""`GET /v1/models` and `GET /v1/models/{id}`: the served models in OpenAI's shape (the SDK's models.list and
models.retrieve), each with whether it is loaded now. `whisper-1` is listed too: OpenAI's names mean the default."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from stt_engine.api.services import Services, ServicesDep
from stt_engine.errors import NotReady

router = APIRouter()


def _served(services: Services) -> list[dict[str, Any]]:
    created = int(services.started_at)
    models = services.models.describe(created)
    return [*models, {"id": "whisper-1", "object": "model", "created": created, "owned_by": "stt-engine"}]


@router.get("/v1/models", tags=["openai"], summary="The served models")
async def openai_models(services: ServicesDep) -> JSONResponse:
    return JSONResponse({"object": "list", "data": _served(services)})


@router.get("/v1/models/{model_id:path}", tags=["openai"], summary="One served model (the SDK's models.retrieve)")
async def openai_model(services: ServicesDep, model_id: str) -> JSONResponse:
    entries = {entry["id"]: entry for entry in _served(services)}
    picked = services.models.lookup(model_id)  # an unknown id: 404 model_not_found
    entry = entries.get(model_id) or entries.get(picked.id)
    if entry is None:
        raise NotReady("The model is still loading; retry in a few seconds.", headers={"Retry-After": "5"})
    return JSONResponse({**entry, "id": model_id})
