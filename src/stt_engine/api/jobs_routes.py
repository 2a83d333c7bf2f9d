"""Jobs API: submit a recording, poll it or get a webhook, fetch the transcript in any format, list, cancel.

The upload is checked exactly as the sync route checks it (options, size, decodable, duration) before the 202, so
a job that was accepted can only fail for reasons of the server's own.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from stt_engine import decoder
from stt_engine import speakers as speakers_mod
from stt_engine.api.forms import FileField, TranscriptionForm, parse_format
from stt_engine.api.llm import validate_postprocess
from stt_engine.api.responses import transcript_response
from stt_engine.api.security import bearer_token
from stt_engine.api.services import JobsDep, Services, ServicesDep
from stt_engine.api.uploads import require_file, stored_upload
from stt_engine.errors import InvalidRequest, STTError
from stt_engine.jobs.models import (
    Job,
    JobStatus,
    new_job_id,
    options_to_dict,
    owner_of,
    request_fingerprint,
    transcript_from_dict,
)
from stt_engine.jobs.service import JobService
from stt_engine.jobs.webhooks import validate_webhook_url
from stt_engine.options import build_options

router = APIRouter(tags=["jobs"])


class JobNotFound(STTError):
    status = 404
    code = "job_not_found"
    error_type = "invalid_request_error"


class JobNotReady(STTError):
    status = 409
    code = "job_not_completed"
    error_type = "invalid_request_error"


class IdempotencyKeyReused(STTError):
    status = 422
    code = "idempotency_key_reused"
    error_type = "invalid_request_error"


def _owner(request: Request, services: Services) -> str:
    """The hash of the caller's API key: with API_KEYS set, a key sees only its own jobs."""
    if not services.settings.api_keys:
        return ""
    return owner_of(bearer_token(request.headers.get("authorization")))


async def _job(request: Request, services: Services, service: JobService, job_id: str) -> Job:
    job = await service.store.get(job_id)
    if job is None or job.owner != _owner(request, services):  # another key's job is "not found", not "forbidden"
        raise JobNotFound(f"No job with id '{job_id}'.", param="id")
    return job


@router.post("/v1/jobs", status_code=202, summary="Submit a recording as a job (answers 202 with its id)")
async def create_job(
    request: Request,
    services: ServicesDep,
    service: JobsDep,
    form: Annotated[TranscriptionForm, Depends()],
    file: FileField = None,
    webhook_url: Annotated[str | None, Form(description="POSTed {id, status} when the job finishes")] = None,
    webhook_secret: Annotated[str | None, Form(description="Signs each delivery (X-STT-Signature)")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JSONResponse:
    """`response_format` is checked only: choose the format at `/result`."""
    settings = services.settings
    audio, speakers, llm = form.audio, form.speakers, form.llm
    fmt = audio.format()
    words = audio.words()
    webhook = await validate_webhook_url(webhook_url, service.webhooks.policy)
    model = services.models.lookup(audio.model)  # an unknown id: 404 model_not_found, before anything is stored
    # the job loads its model when it runs; one never loaded yet is checked against the default's languages
    languages = model.languages or services.model_languages()
    options = build_options(
        settings, languages, language=audio.language, prompt=audio.prompt,
        temperature=audio.temperature, word_timestamps=words, hotwords=audio.hotwords,
        vocabulary=services.vocabulary(),
    )
    text = form.text.options(settings)  # as the sync routes check them
    split = speakers.split(settings)
    diarization = speakers.diarization(fmt, split)
    if diarization is not None:  # a bad reference is a 400 now, not a failed job later
        await speakers_mod.prepare(settings, diarization)
    validate_postprocess(services, llm.postprocess, llm.postprocess_prompt)
    file = require_file(file)
    owner = _owner(request, services)
    key = idempotency_key.strip() if idempotency_key and idempotency_key.strip() else None
    existing = await service.store.by_idempotency_key(owner, key) if key else None
    job_id = new_job_id()
    folder = service.job_dir(job_id)
    filename = (file.filename or "audio").rsplit("/", 1)[-1][:200]
    try:
        async with stored_upload(file, settings) as path:
            fingerprint = None
            if key:
                fields = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
                fingerprint = await run_in_threadpool(request_fingerprint, path, fields)
            if existing is not None:  # a retried submission: the job it created, without storing the audio again
                return _replayed(existing, fingerprint)
            async with services.intake.decoding_slot():  # checked whole, as the runner will read it; the samples are let go
                checked = await run_in_threadpool(
                    decoder.decode, path, max_seconds=settings.max_audio_seconds, check_only=True
                )
                duration = checked.duration
            if split:  # refused now, not when the job runs
                decoder.split_channel_limit(checked.source_channels, settings)
            await run_in_threadpool(folder.mkdir, parents=True, exist_ok=True)
            await run_in_threadpool(shutil.move, path, folder / "upload")
        request.state.audio_seconds = duration
        job = Job(
            id=job_id, owner=owner, filename=filename, audio_path=f"{job_id}/upload", duration=duration,
            options=options_to_dict(options), include_words=words, postprocess=llm.postprocess or None,
            postprocess_prompt=llm.postprocess_prompt, webhook_url=webhook, webhook_secret=webhook_secret or None,
            idempotency_key=key, request_fingerprint=fingerprint, redact="pii" if text.redact else "none",
            normalize="numbers" if text.normalize_numbers else "none", channels="split" if split else "mix",
            known_speaker_names=speakers.names(),
            diarize=speakers_mod.request_to_dict(diarization), model=None if model.default else model.id,
        )
        stored, created = await service.submit(job)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise
    if not created:  # the same key, submitted twice at the same moment: the first one won
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return _replayed(stored, fingerprint)
    return JSONResponse(stored.public(), status_code=202, headers={"Location": f"/v1/jobs/{stored.id}"})


def _replayed(existing: Job, fingerprint: str | None) -> JSONResponse:
    """The job an Idempotency-Key already created (200, Idempotent-Replayed), or 422 when this request differs
    from the one that created it (another file or other fields): that upload would otherwise be silently lost.
    Jobs stored before fingerprints were kept replay as before."""
    if existing.request_fingerprint and fingerprint and existing.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            f"This Idempotency-Key was already used for a different request (job '{existing.id}'): another file "
            "or other form fields. Use a new key for a new request.", param="Idempotency-Key",
        )
    return JSONResponse(existing.public(), status_code=200,
                        headers={"Location": f"/v1/jobs/{existing.id}", "Idempotent-Replayed": "true"})


@router.get("/v1/jobs/{job_id}", summary="A job's status, progress and (when completed) its result")
async def get_job(request: Request, services: ServicesDep, service: JobsDep, job_id: str) -> JSONResponse:
    return JSONResponse((await _job(request, services, service, job_id)).public())


@router.get("/v1/jobs/{job_id}/result", summary="A completed job's transcript in any response format")
async def get_job_result(
    request: Request, services: ServicesDep, service: JobsDep, job_id: str,
    response_format: Annotated[str | None, Query()] = None,
) -> Response:
    fmt = parse_format(response_format)
    job = await _job(request, services, service, job_id)
    if job.status != JobStatus.completed.value or job.result is None:
        raise JobNotReady(f"Job '{job_id}' is {job.status}; its result exists once it is completed.",
                          headers={"Retry-After": "5"} if job.status in ("queued", "processing") else None)
    return transcript_response(transcript_from_dict(job.result), fmt, include_words=job.include_words,
                               postprocess=job.postprocess_result)


@router.get("/v1/jobs", summary="This caller's jobs, newest first (cursor: after=<last id>)")
async def list_jobs(
    request: Request,
    services: ServicesDep,
    service: JobsDep,
    status: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=100)] = None,
) -> JSONResponse:
    if status is not None and status not in {s.value for s in JobStatus}:
        raise InvalidRequest(f"Unknown status '{status}'; use one of: {', '.join(s.value for s in JobStatus)}.",
                             param="status", code="invalid_status")
    jobs = await service.store.list(_owner(request, services), status, limit + 1, after)
    page = jobs[:limit]
    body: dict[str, Any] = {
        "object": "list",
        "data": [j.public(include_result=False) for j in page],
        "has_more": len(jobs) > limit,
        "last_id": page[-1].id if page else None,
    }
    return JSONResponse(body)


@router.post("/v1/jobs/{job_id}/retry", summary="Run a failed or cancelled job again (its attempts start over)")
async def retry_job(request: Request, services: ServicesDep, service: JobsDep, job_id: str) -> JSONResponse:
    job = await _job(request, services, service, job_id)
    if not await asyncio.to_thread((service.storage / job.audio_path).exists):
        raise JobNotReady(f"Job '{job_id}' can no longer be retried: its audio is not stored any more.",
                          code="job_audio_missing", param="id")
    retried = await service.retry(job_id)
    if retried is None:
        raise JobNotReady(f"Job '{job_id}' is {job.status}; only a failed or cancelled job can be retried.",
                          code="job_not_retryable", param="id")
    return JSONResponse(retried.public(), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


@router.delete("/v1/jobs/{job_id}", summary="Cancel a queued or running job, or delete a finished one")
async def delete_job(request: Request, services: ServicesDep, service: JobsDep, job_id: str) -> JSONResponse:
    job = await _job(request, services, service, job_id)
    if job.status in (JobStatus.queued.value, JobStatus.processing.value):
        cancelled = await service.store.cancel(job_id)
        if cancelled is not None:  # the run notices within a second and drops its queued chunks
            return JSONResponse(cancelled.public())
        job = await _job(request, services, service, job_id)  # it finished meanwhile: delete it as a finished job
    await service.remove(job)
    return JSONResponse({"id": job_id, "object": "transcription.job", "deleted": True})
