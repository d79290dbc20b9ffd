"""Load configuration profiles, personas and their overrides, failing loudly and precisely.

A profile is ``configs/profiles/NAME.yaml`` (or any YAML path). It may name a parent with
``extends: NAME``. Environment variables ``AVATAR_A__B__C=value`` override the key ``a.b.c``
(values parsed as YAML scalars). Every error names the file, the key and what is allowed.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from configs.schema import AppConfig, PersonaConfig
from models.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
PROFILE_DIR = CONFIG_DIR / "profiles"
PERSONA_DIR = CONFIG_DIR / "personas"
ENV_PREFIX = "AVATAR_"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, not {type(data).__name__}"
        )
    return data


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def profile_path(name: str) -> Path:
    """A profile name (``local``) or a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown config profile {name!r}; known profiles: {', '.join(known)} "
                          f"(or pass a path to a YAML file)")
    return path


def _load_profile_data(
    path: Path, seen: tuple[Path, ...] = ()
) -> tuple[dict[str, Any], list[Path]]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle through {[str(p) for p in seen]}")
    data = _read_yaml(path)
    files = [path]
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: key 'extends' must be a profile name, got {parent!r}")
        parent_data, parent_files = _load_profile_data(
            profile_path(parent), (*seen, path.resolve())
        )
        data = _merge(parent_data, data)
        files = parent_files + files
    return data, files


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``AVATAR_MODELS__LLM__BACKEND=openai`` -> ``{"models": {"llm": {"backend": "openai"}}}``."""
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        if not keys:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return out


def _annotation_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _annotation_model(arg)
        if found is not None:
            return found
    return None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _annotation_model(field.annotation)
    return current


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: ``FILE: key.path: what is wrong; what is allowed``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            lines.append(f"{source}: {key}: unknown key; allowed keys here: {', '.join(allowed)}")
        else:
            got = err.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: {key}: {err['msg']}{got_text}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    name: str = "local",
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AppConfig:
    """Load a profile by name or path, apply ``AVATAR_*`` environment overrides, validate."""
    path = profile_path(name)
    data, files = _load_profile_data(path)
    env_data = env_overrides(os.environ if env is None else env)
    sources = " + ".join(str(f) for f in files)
    if env_data:
        data = _merge(data, env_data)
        sources += " + AVATAR_* environment"
    if overrides:
        data = _merge(data, overrides)
    data.setdefault("profile", path.stem)
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, AppConfig, sources)) from None


def with_overrides(config: AppConfig, overrides: Mapping[str, Any]) -> AppConfig:
    """``config`` with ``overrides`` (nested dicts, as in a profile) merged in, validated."""
    data = _merge(config.model_dump(), overrides)
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, AppConfig, "overrides")) from None


def persona_dir(name: str) -> Path:
    return PERSONA_DIR / name


def load_persona(name: str) -> PersonaConfig:
    """``configs/personas/NAME/persona.yaml`` merged with ``guardrails.yaml`` beside it."""
    folder = persona_dir(name)
    path = folder / "persona.yaml"
    if not path.exists():
        known = sorted(p.name for p in PERSONA_DIR.iterdir() if (p / "persona.yaml").exists())
        raise ConfigError(f"unknown persona {name!r}; known personas: {', '.join(known)}")
    data = _read_yaml(path)
    sources = str(path)
    rails = folder / "guardrails.yaml"
    if rails.exists():
        if "guardrails" in data:
            raise ConfigError(f"{path}: guardrails are set both here and in {rails}; keep one")
        data["guardrails"] = _read_yaml(rails)
        sources += f" + {rails}"
    try:
        return PersonaConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, PersonaConfig, sources)) from None


def knowledge_dir(config: AppConfig, kb_name: str) -> Path:
    for kb in config.knowledge_bases:
        if kb.name == kb_name:
            path = Path(kb.path)
            return path if path.is_absolute() else CONFIG_DIR / path
    known = [kb.name for kb in config.knowledge_bases]
    raise ConfigError(f"unknown knowledge base {kb_name!r}; configured: {known} "
                      f"(add it under knowledge_bases in the profile)")
