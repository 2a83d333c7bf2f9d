"""`POST /v1/audio/diarization`: who spoke when, without transcription (as speaches offers it).

The upload is received and decoded exactly as a transcription's (`receive_audio`: size, queue room, the decoding
bound); the turns come from the diarization executor (`speakers.diarize`), so the model's scheduler is not involved
and the answer costs only the diarization.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from stt_engine import speakers as speakers_mod
from stt_engine.api.routes import (
    FileField,
    MaxSpeakersField,
    MinSpeakersField,
    SpeakerNamesField,
    SpeakerReferencesField,
    parse_speaker_names,
)
from stt_engine.api.schemas import DiarizationResponse
from stt_engine.api.transcription import receive_audio

router = APIRouter()


@router.post(
    "/v1/audio/diarization", tags=["openai"], summary="Speaker turns only (who spoke when), no transcription",
    response_model=DiarizationResponse,
)
async def diarization(
    request: Request,
    file: FileField = None,
    known_speaker_names: SpeakerNamesField = None,
    known_speaker_references: SpeakerReferencesField = None,
    min_speakers: MinSpeakersField = None,
    max_speakers: MaxSpeakersField = None,
) -> JSONResponse:
    settings = request.app.state.settings
    wanted = speakers_mod.parse_request(
        parse_speaker_names(known_speaker_names), known_speaker_references, min_speakers, max_speakers
    )
    await speakers_mod.prepare(settings, wanted)  # a bad reference is a 400 before the upload is read
    decoded = await receive_audio(request, file)
    turns = await speakers_mod.diarize(settings, decoded.samples, wanted)
    segments = speakers_mod.label_turns(turns, wanted.names)
    return JSONResponse({
        "object": "audio.diarization",
        "duration": round(decoded.duration, 3),
        "speakers": list(dict.fromkeys(t["speaker"] for t in segments)),
        "segments": segments,
    })
