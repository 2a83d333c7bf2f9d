"""Text processing applied to a finished transcript before any output: invented-phrase filter, PII masking."""

from stt_engine.textproc.pipeline import ProcessedTranscript, TextOptions, finish_transcript, text_options

__all__ = ["ProcessedTranscript", "TextOptions", "finish_transcript", "text_options"]
