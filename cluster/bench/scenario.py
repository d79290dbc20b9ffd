"""The scripted conversation the pipeline benchmark plays: questions from the persona's own
evaluation files, in a fixed order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from configs.loader import persona_dir
from models.errors import ConfigError

TurnKind = Literal["answerable", "adversarial", "off_topic", "barge_in"]

OFF_TOPIC = (
    "What is the capital of France?",
    "Can you recommend a good pizza place downtown?",
    "Who won the football game last night?",
)


@dataclass(frozen=True)
class ScriptedTurn:
    kind: TurnKind
    text: str
    expect: tuple[str, ...] = ()
    category: str = ""
    interrupt_with: ScriptedTurn | None = field(default=None, compare=False)


def _items(data: Any, *keys: str) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        for key in keys:
            if key in data:
                return list(data[key])
        return []
    return list(data or [])


def _text(item: dict[str, Any], path: Path) -> str:
    for key in ("question", "q", "text", "prompt"):
        if key in item:
            return str(item[key])
    raise ConfigError(f"{path}: entry {item!r} has no 'question' key")


def load_eval(persona: str) -> tuple[list[ScriptedTurn], list[ScriptedTurn]]:
    """(answerable, adversarial) turns from ``configs/personas/NAME/eval/``."""
    folder = persona_dir(persona) / "eval"
    answerable_path, adversarial_path = folder / "answerable.yaml", folder / "adversarial.yaml"
    for path in (answerable_path, adversarial_path):
        if not path.exists():
            raise ConfigError(f"{path}: missing; the pipeline benchmark needs the persona's "
                              "evaluation questions")
    answerable = [
        ScriptedTurn("answerable", _text(item, answerable_path),
                     tuple(str(e) for e in item.get("expect", ())))
        for item in _items(yaml.safe_load(answerable_path.read_text()), "questions", "answerable")
    ]
    adversarial = [
        ScriptedTurn("adversarial", _text(item, adversarial_path),
                     category=str(item.get("category", "")))
        for item in _items(yaml.safe_load(adversarial_path.read_text()), "adversarial", "blocked")
    ]
    return answerable, adversarial


def build_script(persona: str, turns: int = 24) -> list[ScriptedTurn]:
    """About half answerable, a fifth adversarial (spread over categories), 2 off-topic and
    a quarter barge-ins (an answer interrupted by the next question, which is answered too)."""
    answerable, adversarial = load_eval(persona)
    n_barge = max(3, turns // 4)
    n_off = 2
    n_adv = max(4, turns // 5)
    n_ans = max(1, turns - n_adv - n_off - n_barge)
    by_category: dict[str, list[ScriptedTurn]] = {}
    for turn in adversarial:
        by_category.setdefault(turn.category, []).append(turn)
    adv: list[ScriptedTurn] = []
    while len(adv) < min(n_adv, len(adversarial)):
        for items in by_category.values():
            if items and len(adv) < n_adv:
                adv.append(items.pop(0))
    ans = answerable[:n_ans]
    spare = answerable[n_ans:] or answerable
    script: list[ScriptedTurn] = []
    for i in range(n_barge):
        first = spare[(2 * i) % len(spare)]
        second = spare[(2 * i + 1) % len(spare)]
        script.append(ScriptedTurn("barge_in", first.text, first.expect, interrupt_with=second))
    mixed: list[ScriptedTurn] = []
    extras = adv + [ScriptedTurn("off_topic", t) for t in OFF_TOPIC[:n_off]]
    step = max(1, len(ans) // max(1, len(extras)))
    for i, turn in enumerate(ans):
        mixed.append(turn)
        if i % step == step - 1 and extras:
            mixed.append(extras.pop(0))
    mixed.extend(extras)
    # barge-ins spread through the conversation
    for j, turn in enumerate(script):
        mixed.insert(min(len(mixed), (j + 1) * len(mixed) // (n_barge + 1)), turn)
    return mixed
