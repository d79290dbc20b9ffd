"""Configuration fails at start-up with a message naming the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from configs import CONFIG_DIR, load_config
from configs.loader import PROFILE_DIR, env_overrides, load_persona
from models.errors import ConfigError

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_every_shipped_profile_loads(profile: str) -> None:
    cfg = load_config(profile, env={})
    assert cfg.persona in cfg.personas
    assert any(kb.name == "maple-clinic" for kb in cfg.knowledge_bases)


def test_local_profile_is_cpu_only_and_embedded() -> None:
    cfg = load_config("local", env={})
    assert (cfg.models.asr.backend, cfg.models.llm.backend, cfg.models.tts.backend) == (
        "whisper", "kb", "espeak")
    assert cfg.cluster.http_port == 8000


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  tts:\n    backend: espeak\n    speed: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={})
    msg = err.value.message
    assert str(path) in msg
    assert "models.tts.speed: unknown key" in msg
    assert "rate_wpm" in msg and "backend" in msg


def test_unknown_backend_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  llm:\n    backend: gpt-9\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={})
    msg = err.value.message
    assert "models.llm.backend" in msg and "gpt-9" in msg
    for allowed in ("kb", "openai", "llamacpp", "vllm"):
        assert allowed in msg


def test_wrong_type_is_reported_with_its_value(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster:\n  http_port: eighty\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={})
    assert "cluster.http_port" in err.value.message and "'eighty'" in err.value.message


def test_malformed_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(write(tmp_path, "a: [1, 2\n")), env={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(str(write(tmp_path, "- 1\n- 2\n", "list.yaml")), env={})


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known profiles: .*local"):
        load_config("nope", env={})


def test_extends_merges_and_cycles_fail(tmp_path: Path) -> None:
    child = write(tmp_path, "extends: local\nmodels:\n  tts:\n    backend: piper\n", "c.yaml")
    cfg = load_config(str(child), env={})
    assert cfg.models.tts.backend == "piper" and cfg.models.asr.backend == "whisper"
    a = write(tmp_path, f"extends: {tmp_path / 'b.yaml'}\n", "a.yaml")
    write(tmp_path, f"extends: {a}\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(a), env={})


def test_environment_overrides_single_keys() -> None:
    env = {"AVATAR_MODELS__LLM__BACKEND": "openai", "AVATAR_CLUSTER__HTTP_PORT": "9000",
           "UNRELATED": "x"}
    assert env_overrides(env) == {"models": {"llm": {"backend": "openai"}},
                                  "cluster": {"http_port": 9000}}
    cfg = load_config("local", env=env)
    assert cfg.models.llm.backend == "openai" and cfg.cluster.http_port == 9000


def test_bad_environment_override_names_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"AVATAR_\* environment.*models.tts.backend"):
        load_config("local", env={"AVATAR_MODELS__TTS__BACKEND": "festival"})


def test_config_is_frozen() -> None:
    cfg = load_config("local", env={})
    with pytest.raises(ValidationError):
        cfg.models.llm.backend = "openai"  # type: ignore[misc]


def test_default_persona_has_voice_avatar_guardrails_and_knowledge() -> None:
    persona = load_persona("maple-clinic")
    assert persona.tenant == "maple" and persona.knowledge_base == "maple-clinic"
    assert persona.avatar and persona.greeting and persona.system_prompt
    assert persona.guardrails.blocked_topics, "the persona ships guardrail topics"
    kb_dir = CONFIG_DIR / "personas/maple-clinic/knowledge"
    assert len(list(kb_dir.glob("*"))) >= 5


def test_unknown_persona_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known personas: .*maple-clinic"):
        load_persona("nobody")
