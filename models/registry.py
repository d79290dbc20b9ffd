"""Backend lookup: one line per backend, imported only when chosen."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from models.errors import BackendUnavailable, ConfigError

GPU_BACKENDS = {"nemo", "vllm"}


def load_backend(layer: str, name: str, table: Mapping[str, str]) -> Any:
    """Import and return the class registered as ``table[name]`` (``"module:Class"``)."""
    try:
        target = table[name]
    except KeyError:
        raise ConfigError(f"models.{layer}.backend: unknown backend {name!r}; "
                          f"allowed: {', '.join(sorted(table))}") from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " (install it with `pip install '.[gpu]'`)" if name in GPU_BACKENDS else ""
        raise BackendUnavailable(
            f"{layer} backend {name!r} needs a package that is not installed: {exc.name}{hint}"
        ) from exc
    return getattr(module, attr)
