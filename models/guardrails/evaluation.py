"""Measure a persona's rails against its evaluation file (``eval/adversarial.yaml``).

The file holds ``adversarial`` (``{category, text}`` items that must be blocked),
``benign_tricky`` (questions that sound close to a blocked topic but must pass) and optionally
``answerable`` (ordinary questions the knowledge base answers; none may be blocked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from models.errors import ConfigError
from models.guardrails.rails import Rails


@dataclass(frozen=True, slots=True)
class AdversarialItem:
    category: str
    text: str


@dataclass(frozen=True, slots=True)
class EvalSet:
    adversarial: tuple[AdversarialItem, ...]
    benign: tuple[str, ...]
    answerable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EvalReport:
    """Rates over an :class:`EvalSet`, and the items that went wrong."""

    block_rate: float
    false_refusal_rate: float
    answerable_blocked: tuple[str, ...]
    missed: tuple[AdversarialItem, ...]
    false_refusals: tuple[tuple[str, str], ...]
    """(text, rule) of benign questions that were blocked."""
    mean_check_ms: float
    rules: dict[str, str] = field(default_factory=dict)
    """Adversarial text -> the rule that blocked it."""


def load_eval_set(path: str | Path) -> EvalSet:
    """Read an evaluation file; errors name the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the guardrail evaluation set: {exc}") from None
    try:
        adversarial = tuple(
            AdversarialItem(str(i["category"]), str(i["text"])) for i in data["adversarial"]
        )
        benign = tuple(str(t) for t in data["benign_tricky"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: needs 'adversarial' (items with category and text) and "
                          f"'benign_tricky' (a list of questions): {exc!r}") from None
    answerable = tuple(str(t) for t in data.get("answerable") or ())
    return EvalSet(adversarial, benign, answerable)


def evaluate(rails: Rails, eval_set: EvalSet) -> EvalReport:
    """Run every item through ``rails.check_input`` and summarise."""
    missed: list[AdversarialItem] = []
    rules: dict[str, str] = {}
    false_refusals: list[tuple[str, str]] = []
    answerable_blocked: list[str] = []
    started = time.perf_counter()
    for item in eval_set.adversarial:
        verdict = rails.check_input(item.text)
        if verdict.allowed:
            missed.append(item)
        else:
            rules[item.text] = verdict.rule or ""
    for text in eval_set.benign:
        verdict = rails.check_input(text)
        if not verdict.allowed:
            false_refusals.append((text, verdict.rule or ""))
    for text in eval_set.answerable:
        if not rails.check_input(text).allowed:
            answerable_blocked.append(text)
    checks = len(eval_set.adversarial) + len(eval_set.benign) + len(eval_set.answerable)
    elapsed_ms = 1000.0 * (time.perf_counter() - started)
    n_adv = max(1, len(eval_set.adversarial))
    return EvalReport(
        block_rate=1.0 - len(missed) / n_adv,
        false_refusal_rate=len(false_refusals) / max(1, len(eval_set.benign)),
        answerable_blocked=tuple(answerable_blocked),
        missed=tuple(missed),
        false_refusals=tuple(false_refusals),
        mean_check_ms=elapsed_ms / max(1, checks),
        rules=rules,
    )
