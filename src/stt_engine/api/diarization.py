"""`POST /v1/audio/diarization`: who spoke when, without transcription (as speaches offers it).

The upload is received and decoded exactly as a transcription's (`receive_audio`: size, queue room, the decoding
bound); the turns come from the diarization executor (`speakers.diarize`), so the model's scheduler is not involved
and the answer costs only the diarization.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from stt_engine import speakers as speakers_mod
from stt_engine.api.admission import receive_audio
from stt_engine.api.forms import FileField, KnownSpeakersForm
from stt_engine.api.schemas import DiarizationResponse
from stt_engine.api.services import ServicesDep

router = APIRouter()


@router.post(
    "/v1/audio/diarization", tags=["openai"], summary="Speaker turns only (who spoke when), no transcription",
    response_model=DiarizationResponse,
)
async def diarization(
    request: Request,
    services: ServicesDep,
    speakers: Annotated[KnownSpeakersForm, Depends()],
    file: FileField = None,
) -> JSONResponse:
    settings = services.settings
    wanted = speakers.request()
    await speakers_mod.prepare(settings, wanted)  # a bad reference is a 400 before the upload is read
    decoded = await receive_audio(request, services, file)
    turns = await speakers_mod.diarize(settings, decoded.samples, wanted)
    segments = speakers_mod.label_turns(turns, wanted.names)
    return JSONResponse({
        "object": "audio.diarization",
        "duration": round(decoded.duration, 3),
        "speakers": list(dict.fromkeys(t["speaker"] for t in segments)),
        "segments": segments,
    })
