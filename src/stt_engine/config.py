"""Settings: the one home of every knob, read from environment variables and an optional `.env`.

Each field's environment variable is its upper-case name (``whisper_model`` -> ``WHISPER_MODEL``).
`.env.example` and docs/operations-and-settings.md list them all; `tests/test_config.py` checks that the three agree.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated


class Settings(BaseSettings):
    """All runtime settings. Defaults give a working CPU server on the bundled model."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # --- model and decoding -------------------------------------------------------------------
    whisper_model: str | None = Field(
        None, description="Model folder, or a name looked up under MODELS_DIR (e.g. large-v3-turbo)."
    )
    whisper_device: Literal["auto", "cuda", "cpu"] = "auto"
    whisper_compute_type: str = Field("auto", description="auto = float16 on CUDA, int8 on CPU.")
    whisper_beam_size: int = Field(5, ge=1, le=20)
    whisper_cpu_threads: int = Field(0, ge=0, description="Threads per model worker; 0 = cores / workers.")
    whisper_num_workers: int = Field(0, ge=0, description="Parallel model workers; 0 = auto (cores on CPU, 1 on GPU).")
    whisper_batch_size: int = Field(
        0, ge=0, le=64, description="Most 30 s chunks decoded together; 0 = auto (8 on CUDA, 1 on CPU)."
    )
    whisper_batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="Longest wait to fill a batch.")
    whisper_default_language: str | None = Field(None, description="Language used when a request gives none.")
    whisper_vad_filter: bool = True
    whisper_condition_on_previous_text: bool = False
    whisper_device_index: int = 0
    whisper_solo_instance: bool = Field(
        True, description="On CPU with several workers, a second model instance decodes a lone window on all cores."
    )
    whisper_worker_nice: int = Field(
        10, ge=0, le=19,
        description="How much lower the CPU priority of the workers' threads is than the all-cores instance's, so a "
        "short request's window on it is not slowed by long ones (0: the same).",
    )
    models_dir: Path = Path("models")
    model_cache_dir: Path | None = Field(None, description="Where the bundled model is assembled.")
    verify_model: bool = Field(True, description="Check model files against manifest.json at start-up.")
    whisper_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra models served beside WHISPER_MODEL (names or folders, commas); "
        "a request's `model` picks one (docs/models.md)."
    )
    model_ttl_s: float = Field(600.0, ge=0, description="An extra model idle this long is unloaded; 0 = never.")
    model_memory_mb: int = Field(
        0, ge=0, description="Memory all loaded models may take (estimated from model.bin); 0 = no budget."
    )
    models_preload: bool = Field(False, description="Load the WHISPER_MODELS at start instead of on first use.")

    # --- server -------------------------------------------------------------------------------
    server_host: str = "0.0.0.0"
    server_port: int = Field(8003, ge=1, le=65535)
    log_dir: Path = Path("logs")
    log_level: str = "INFO"
    log_transcripts: bool = False
    server_header_timeout_s: float = Field(
        10.0, gt=0, description="A request's headers must arrive within this many seconds of its first byte."
    )
    server_body_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the next piece of a request body (not the whole upload)."
    )
    server_keepalive_s: float = Field(5.0, gt=0, description="Idle keep-alive connections close after this.")
    server_max_connections: int = Field(
        1000, ge=1, description="Open connections (fewer if the open-file limit is low); past it 503 + Retry-After."
    )
    server_ssl_certfile: Path | None = Field(
        None, description="TLS certificate (PEM): serve HTTPS, which browsers need before the page may use the mic."
    )
    server_ssl_keyfile: Path | None = Field(None, description="The certificate's private key (PEM).")

    # --- admission control ----------------------------------------------------------------------
    max_queued_requests: int = Field(64, ge=1)
    max_queue_seconds: float = Field(3600.0, gt=0, description="Audio seconds waiting, at most.")
    request_timeout_base_s: float = Field(60.0, gt=0)
    request_timeout_rtf: float = Field(2.0, gt=0, description="Timeout = base + rtf x audio seconds.")

    # --- limits and security --------------------------------------------------------------------
    max_upload_mb: float = Field(1024.0, gt=0)
    max_audio_seconds: float = Field(
        3600.0, gt=0, description="Longest audio accepted; at most MAX_QUEUE_SECONDS, so that a file that long fits."
    )
    max_concurrent_decodes: int = Field(2, ge=1, description="Uploads decoded at once; more wait their turn.")
    diarize_concurrency: int = Field(2, ge=1, description="Diarizations (speaker turns) run at once; more wait.")
    decoder_processes: int = Field(0, ge=0, description="Decoder child processes; 0: MAX_CONCURRENT_DECODES + 1 (plus 2 for headers).")
    decoder_memory_mb: int = Field(4096, ge=256, description="Address-space limit of each decoder process.")
    decoder_cpu_seconds: float = Field(300.0, gt=0, description="CPU time one file may take in a decoder process.")
    decoder_max_files: int = Field(100, ge=1, description="Files a decoder process serves before it is replaced.")
    decoder_max_mb: int = Field(4096, ge=1, description="Decoded MB a decoder process hands back before it is replaced.")
    max_split_channels: int = Field(8, ge=1, description="Most channels channels=split takes; mix takes any count.")
    max_prompt_chars: int = Field(2000, ge=0)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    auth_open_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/health", "/health/ready", "/metrics"]
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    shutdown_grace_s: float = Field(60.0, ge=0)

    # --- realtime sessions (/v1/realtime) -------------------------------------------------------
    max_realtime_sessions: int = Field(8, ge=0, description="Live sessions open at once; 0 turns /v1/realtime off.")
    realtime_idle_timeout_s: float = Field(
        60.0, gt=0, description="Close a session that sent no audio or commit this long."
    )
    realtime_max_session_s: float = Field(3600.0, gt=0, description="Longest a session may stay open.")
    realtime_max_append_bytes: int = Field(1 << 20, ge=1024, description="Most audio bytes in one append.")
    realtime_max_sessions_per_key: int = Field(
        4, ge=1, description="Live sessions one API key (or, without API_KEYS, one client address) may hold at once."
    )
    realtime_partial_interval_ms: float = Field(
        500.0, ge=100, le=5000, description="How often an open turn is re-decoded for partial text."
    )
    realtime_partial_model: str | None = Field(
        None, description="A served model id that decodes live partials; finals stay the session's model's."
    )

    # --- post-processing (vLLM or any OpenAI-compatible server) ---------------------------------
    vllm_base_url: str | None = None
    vllm_api_key: str | None = None
    vllm_model: str | None = None
    vllm_timeout_s: float = Field(60.0, gt=0)
    vllm_connect_timeout_s: float = Field(5.0, gt=0)
    vllm_max_retries: int = Field(2, ge=0)
    vllm_max_tokens: int = Field(1024, ge=1)
    vllm_temperature: float = Field(0.2, ge=0, le=2)
    vllm_max_response_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest LLM response read (streamed or whole); larger is an error."
    )
    vllm_context_tokens: int | None = Field(None, description="Context size when /v1/models doesn't say.")
    prompts_dir: Path | None = Field(None, description="Folder overriding the shipped prompt templates.")

    # --- jobs (POST /v1/jobs) and webhooks -------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Where the server keeps state (the jobs database, uploads).")
    jobs_url: str | None = Field(
        None, description="sqlite:///path (default: DATA_DIR/jobs.sqlite3) or redis://host:6379/0 for many nodes."
    )
    jobs_storage_dir: Path | None = Field(None, description="Job uploads; shared by every node. Default DATA_DIR/jobs.")
    jobs_concurrency: int = Field(4, ge=1, le=256, description="Jobs one node runs at once (they batch together).")
    jobs_local_worker: bool = Field(True, description="With Redis: false = this server only accepts jobs.")
    jobs_retention_hours: float = Field(168.0, gt=0, description="Finished jobs and their audio are deleted after.")
    jobs_heartbeat_timeout_s: float = Field(
        30.0, ge=5, description="With Redis: a worker silent this long is dead and its jobs go to another."
    )
    jobs_max_attempts: int = Field(
        3, ge=1, le=100, description="Starts of one job's run (restarts after a crash count); then it is failed."
    )
    webhook_include_result: bool = False
    webhook_max_attempts: int = Field(10, ge=1, le=10)
    webhook_timeout_s: float = Field(10.0, gt=0)
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts or CIDRs webhooks may go to (empty = any public address)."
    )
    webhook_allow_private: bool = Field(
        False, description="Let webhooks reach loopback and private addresses (link-local/metadata never)."
    )

    # --- transcript text: invented phrases ------------------------------------------------------
    hallucination_filter: bool = Field(
        True, description="Drop known invented phrases (per language) whose evidence is weak; collapse loops."
    )
    hallucination_phrases_file: Path | None = Field(
        None, description="Extra phrases, one a line (optionally `ko<TAB>phrase`; `re:` for a regex)."
    )
    channels_default: Literal["mix", "split"] = Field(
        "mix", description="split = one speaker per channel for multi-channel files unless a request says mix."
    )
    normalize_default: Literal["none", "numbers"] = Field(
        "none", description="numbers = spoken numbers to written form (NeMo ITN, the [itn] extra) unless a request says none."
    )
    normalize_cache_dir: Path | None = Field(
        None, description="Where NeMo's compiled grammars are cached; default DATA_DIR/itn."
    )
    vocabulary_file: Path | None = Field(
        None, description="Team terms, one a line (`term | misspelling | ...`): hotwords, correction, LLM correct."
    )
    redact_default: Literal["none", "pii"] = Field(
        "none", description="pii = mask personal data in every transcript unless a request says redact=none."
    )
    redact_keep_original: bool = Field(
        False, description="With masking, also return the unmasked text as original_text (JSON formats)."
    )

    # --- speaker diarization (see docs/diarization.md) -------------------------------------------
    diarization_model_dir: Path | None = Field(
        None, description="Folder of the CAM++ speaker model; default MODEL_CACHE_DIR/campplus-cn-en-common."
    )
    diarize_threshold: float = Field(
        0.4, gt=0, lt=1, description="Cosine similarity below which two groups of speech are never one speaker."
    )
    diarize_cpu_threads: int = Field(0, ge=0, description="Threads of one diarization; 0 = half the cores (at least 1).")

    @field_validator(
        "api_keys", "auth_open_paths", "cors_origins", "webhook_allowed_hosts", "whisper_models", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "whisper_model", "whisper_default_language", "vllm_base_url", "vllm_model", "jobs_url",
        "server_ssl_certfile", "server_ssl_keyfile", "diarization_model_dir", "realtime_partial_model",
        mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
