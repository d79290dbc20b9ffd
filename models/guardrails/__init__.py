"""Guardrails layer: per-persona input and output rails."""

from models.guardrails.base import Verdict

__all__ = ["Verdict"]
