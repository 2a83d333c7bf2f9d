"""Model management: find a model folder, assemble the bundled one, verify, download, convert."""

from stt_engine.models.resolve import ResolvedModel, resolve_model

__all__ = ["ResolvedModel", "resolve_model"]
