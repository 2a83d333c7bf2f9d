"""stt-engine: a self-hosted speech-to-text server built on faster-whisper."""

__version__ = "0.1.0"
