"""Settings: the one home of every knob, read from environment variables and an optional `.env`.

Each field's environment variable is its upper-case name (``whisper_model`` -> ``WHISPER_MODEL``).
`.env.example` and the README list them all; `tests/test_config.py` checks that the three agree.
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
    models_dir: Path = Path("models")
    model_cache_dir: Path | None = Field(None, description="Where the bundled model is assembled.")
    verify_model: bool = Field(True, description="Check model files against manifest.json at start-up.")

    # --- server -------------------------------------------------------------------------------
    server_host: str = "0.0.0.0"
    server_port: int = Field(8003, ge=1, le=65535)
    log_dir: Path = Path("logs")
    log_level: str = "INFO"
    log_transcripts: bool = False

    # --- admission control ----------------------------------------------------------------------
    max_queued_requests: int = Field(64, ge=1)
    max_queue_seconds: float = Field(3600.0, gt=0, description="Audio seconds waiting, at most.")
    request_timeout_base_s: float = Field(60.0, gt=0)
    request_timeout_rtf: float = Field(2.0, gt=0, description="Timeout = base + rtf x audio seconds.")

    # --- limits and security --------------------------------------------------------------------
    max_upload_mb: float = Field(1024.0, gt=0)
    max_audio_seconds: float = Field(4 * 3600.0, gt=0)
    max_prompt_chars: int = Field(2000, ge=0)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    auth_open_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/health", "/health/ready", "/metrics"]
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    shutdown_grace_s: float = Field(60.0, ge=0)

    # --- realtime sessions (/v1/realtime) -------------------------------------------------------
    max_realtime_sessions: int = Field(8, ge=0, description="Live sessions open at once; 0 turns /v1/realtime off.")
    realtime_idle_timeout_s: float = Field(60.0, gt=0, description="Close a session that sent nothing this long.")
    realtime_max_session_s: float = Field(3600.0, gt=0, description="Longest a session may stay open.")
    realtime_max_append_bytes: int = Field(1 << 20, ge=1024, description="Most audio bytes in one append.")
    realtime_partial_interval_ms: float = Field(
        500.0, ge=100, le=5000, description="How often an open turn is re-decoded for partial text."
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
    vllm_context_tokens: int | None = Field(None, description="Context size when /v1/models doesn't say.")
    prompts_dir: Path | None = Field(None, description="Folder overriding the shipped prompt templates.")

    @field_validator("api_keys", "auth_open_paths", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("whisper_model", "whisper_default_language", "vllm_base_url", "vllm_model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
