"""Guardrails layer: per-persona input and output rails."""

from models.guardrails.base import Verdict
from models.guardrails.rails import Rails

__all__ = ["Rails", "Verdict"]
