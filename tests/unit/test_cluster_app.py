"""How configuration becomes Serve deployments (no Ray cluster is started): replica counts,
autoscaling, resources, refusals of configs that cannot work, and the vLLM path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.app import (
    SAME_LOOP_ENV,
    absolute_paths,
    build_app,
    check_deployable,
    deployment_options,
    nest_dotted,
)
from cluster.serve_llm import MODEL_ID, ServeChatLLM, llm_config_kwargs
from configs import load_config
from models.errors import BackendError, BackendUnavailable, ConfigError
from models.llm.base import ChatMessage, LLMRequest

pytestmark = pytest.mark.unit


def test_autoscaled_and_fixed_deployments_get_the_options_serve_expects():
    cfg = load_config("local")
    asr = deployment_options("ASR", cfg.deployments.asr, same_loop=True)
    scaling = asr["autoscaling_config"]
    assert "num_replicas" not in asr
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 2)
    assert scaling["target_ongoing_requests"] == 2
    assert scaling["metrics_interval_s"] < scaling["look_back_period_s"]
    assert asr["ray_actor_options"]["runtime_env"]["env_vars"] == SAME_LOOP_ENV
    renderer = deployment_options("Renderer", cfg.deployments.renderer)
    assert renderer["num_replicas"] == 1 and "autoscaling_config" not in renderer
    assert renderer["max_ongoing_requests"] >= 4 * cfg.deployments.renderer.sessions_per_replica
    assert "runtime_env" not in renderer["ray_actor_options"]


def test_gpu_profile_pins_one_renderer_per_gpu():
    cfg = load_config("gpu")
    options = deployment_options("Renderer", cfg.deployments.renderer)
    assert options["ray_actor_options"]["num_gpus"] == 1
    assert options["graceful_shutdown_timeout_s"] >= 600
    check_deployable(cfg)


@pytest.mark.parametrize(("overrides", "words"), [
    ({"renderer": {"num_replicas": "auto"}}, "must not autoscale"),
    ({"knowledge": {"num_replicas": 2}}, "qdrant_url"),
    ({"knowledge": {"num_replicas": "auto", "max_replicas": 3}}, "qdrant_url"),
    ({"renderer": {"sessions_per_replica": 8, "max_ongoing_requests": 16}}, "at least 32"),
])
def test_configs_that_cannot_work_are_refused_with_what_to_change(overrides, words):
    cfg = load_config("local", overrides={"deployments": overrides})
    with pytest.raises(ConfigError, match=words):
        check_deployable(cfg)


def test_several_knowledge_replicas_are_fine_with_a_qdrant_server():
    cfg = load_config("local", overrides={
        "deployments": {"knowledge": {"num_replicas": 2}},
        "models": {"knowledge": {"qdrant_url": "http://127.0.0.1:6333"}}})
    check_deployable(cfg)


def test_builder_args_and_paths():
    assert nest_dotted({"a.b.c": 1, "a.d": 2, "e": 3}) == {"a": {"b": {"c": 1}, "d": 2}, "e": 3}
    with pytest.raises(ConfigError, match="unknown application args"):
        build_app({"profile": "local", "replicas": 3})
    cfg = absolute_paths(load_config("local"), Path("/srv/avatar"))
    assert cfg.models.knowledge.qdrant_path == "/srv/avatar/.data/qdrant"
    assert cfg.cluster.session_store_path == "/srv/avatar/.data/sessions.sqlite3"


def test_vllm_goes_through_serve_llm_without_the_50ms_stream_batcher():
    kwargs = llm_config_kwargs(load_config("gpu"))
    assert kwargs["experimental_configs"] == {"stream_batching_interval_ms": 0}
    assert kwargs["model_loading_config"]["model_id"] == MODEL_ID
    assert kwargs["deployment_config"]["autoscaling_config"]["max_replicas"] == 2
    no_model = load_config("gpu", overrides={"models": {"llm": {"model": None}}})
    with pytest.raises(BackendUnavailable, match=r"models\.llm\.model"):
        llm_config_kwargs(no_model)


class FakeStream:
    def __init__(self, items):
        self.items = items
        self.cancelled = False

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for item in self.items:
            yield item

    def cancel(self):
        self.cancelled = True


class FakeChatHandle:
    """Stands in for an LLMServer handle: ``options(stream=True).chat.remote(request)``."""

    def __init__(self, batches):
        self.batches = batches
        self.requests = []

    def options(self, **_):
        return self

    @property
    def chat(self):
        return self

    def remote(self, request):
        self.requests.append(request)
        self.stream = FakeStream(self.batches)
        return self.stream


def sse(content: str) -> str:
    return "data: " + json.dumps({"choices": [{"delta": {"content": content}}]}) + "\n\n"


async def test_serve_llm_chat_stream_becomes_text_deltas():
    handle = FakeChatHandle([[sse("We open "), sse("at 8.")], [sse(""), "data: [DONE]\n\n"]])
    llm = ServeChatLLM(handle, load_config("gpu"), make_request=dict)
    request = LLMRequest((ChatMessage("system", "You are Ava."), ChatMessage("user", "When?")),
                         "When?", (), "I don't know.")
    assert [d async for d in llm.stream(request)] == ["We open ", "at 8."]
    sent = handle.requests[0]
    assert sent["model"] == MODEL_ID and sent["stream"] is True
    assert sent["messages"][-1] == {"role": "user", "content": "When?"}
    assert handle.stream.cancelled


async def test_serve_llm_errors_become_backend_errors():
    handle = FakeChatHandle([["data: " + json.dumps({"error": {"message": "OOM"}}) + "\n\n"]])
    llm = ServeChatLLM(handle, load_config("gpu"), make_request=dict)
    request = LLMRequest((ChatMessage("user", "Hi"),), "Hi", (), "")
    with pytest.raises(BackendError, match="OOM"):
        [d async for d in llm.stream(request)]


@pytest.mark.parametrize(("overrides", "words"), [
    ({"deployments": {"renderer": {"colocate": True}}}, "asr, llm, tts and knowledge only"),
    ({"deployments": {"knowledge": {"colocate": True}, "renderer": {"num_replicas": 2}}},
     "qdrant_url"),
])
def test_colocation_that_cannot_work_is_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        check_deployable(load_config("local", overrides=overrides))


def test_colocated_models_get_no_deployment_of_their_own():
    from ray.serve._private.build_app import build_app as build_serve_app

    from cluster.app import build_application

    cfg = load_config("local", overrides={"deployments": {"llm": {"colocate": True},
                                                          "tts": {"colocate": True}}})
    names = {d.name for d in build_serve_app(build_application(cfg), name="avatar").deployments}
    assert names == {"Gateway", "Renderer", "ASR", "Knowledge"}
    shared = load_config("local")
    names = {d.name for d in build_serve_app(build_application(shared), name="a").deployments}
    assert names == {"Gateway", "Renderer", "ASR", "LLM", "TTS", "Knowledge"}
