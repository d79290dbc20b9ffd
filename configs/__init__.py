"""Configuration: one pydantic schema for everything, YAML profiles loaded by name."""

from configs.loader import CONFIG_DIR, load_config, load_persona
from configs.schema import AppConfig

__all__ = ["CONFIG_DIR", "AppConfig", "load_config", "load_persona"]
