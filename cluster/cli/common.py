"""Shared CLI plumbing: config loading, error reporting, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from configs.loader import load_config
from configs.schema import AppConfig
from models.errors import AvatarError

console = Console(stderr=True)
out = Console()
T = TypeVar("T")

ConfigOption = typer.Option(
    "local", "--config", "-c",
    help="Profile name in configs/profiles/ (local, gpu, ...) or a path to a YAML file. "
    "AVATAR_SECTION__KEY=value environment variables override single keys.",
)
JsonOption = typer.Option(
    False, "--json", help="Print one JSON object on stdout instead of tables."
)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Project errors become one red message and exit code 2, never a traceback."""
    try:
        yield
    except AvatarError as exc:
        console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(2) from None


def load(config: str) -> AppConfig:
    with friendly_errors():
        return load_config(config)


def print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=_default) + "\n")
    sys.stdout.flush()


def emit_json(figures: dict[str, Any], out: Path | None, json_out: bool) -> bool:
    """Write a benchmark's JSON to ``out`` (if given) and print it with ``--json``.
    Returns True when it was printed (the caller skips its table)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2, default=_default) + "\n")
    if json_out:
        print_json(figures)
    return json_out


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def with_status(message: str, fn: Callable[[Callable[[str], None]], T], quiet: bool = False) -> T:
    """Run ``fn(progress)`` under a spinner whose text ``progress(step)`` updates."""
    if quiet:
        return fn(lambda _step: None)
    with console.status(message) as status:
        return fn(lambda step: status.update(f"{message}: {step}"))
