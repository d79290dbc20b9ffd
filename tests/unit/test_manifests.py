"""Deployment manifests: the Serve configs, the KubeRay RayService, the cluster launcher config
and the Grafana dashboard are accepted by the tools that read them and agree with the
application (deployment names, session capacity, GPU counts, metric names)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import ray.autoscaler
import ray.serve
import yaml
from ray.serve.schema import ServeDeploySchema

from cluster.app import nest_dotted
from configs.loader import load_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SERVE = ROOT / "configs" / "serve" / "local.yaml"
GPU_SERVE = ROOT / "configs" / "serve" / "gpu.yaml"
RAYSERVICE = ROOT / "cluster" / "k8s" / "rayservice.yaml"
LAUNCHER = ROOT / "cluster" / "launcher" / "aws-gpu.yaml"
DASHBOARD = ROOT / "cluster" / "grafana" / "avatar-dashboard.json"

IMPORT_PATH = "cluster.app:build_app"
RAY_IMAGE = "rayproject/ray:2.60.0-py311-gpu"
LOCAL_CORES = 2  # the development machine configs/serve/local.yaml is sized for
MIN_RENDERER_DRAIN_S = 600  # a live conversation must be able to finish before shutdown
CALLS_PER_SESSION = 4  # open events stream + audio/text/frame calls of one session at once

try:
    from cluster.app import DEPLOYMENT_NAMES
except ImportError:
    # The deployments cluster/app.py creates (its DEPLOYMENT_NAMES), for when it cannot be
    # imported here.
    DEPLOYMENT_NAMES = ("Gateway", "Renderer", "ASR", "LLM", "TTS", "Knowledge")

# Application metrics (ray.util.metrics names; Ray exports each with a "ray_" prefix).
AVATAR_METRICS = {
    "avatar_stage_latency_ms": "histogram",
    "avatar_sessions": "gauge",
    "avatar_session_capacity": "gauge",
    "avatar_frames_rendered_total": "counter",
    "avatar_frames_dropped_total": "counter",
    "avatar_admission_rejections_total": "counter",
    "avatar_sessions_created_total": "counter",
    "avatar_turns_total": "counter",
    "avatar_render_batch_ms": "histogram",
}
STAGES = {
    "endpoint", "asr", "retrieval", "llm_first_token", "first_clause", "first_audio",
    "voice_to_first_audio", "text_to_first_audio", "turn",
}
# Ray Serve's own metrics as Prometheus sees them (names from ray/serve/_private: replica.py,
# router.py, deployment_state.py, autoscaling_state.py; counters gain "_total" on export).
SERVE_METRICS = {
    "ray_serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas",
    "ray_serve_autoscaling_desired_replicas",
    "ray_serve_autoscaling_target_ongoing_requests",
    "ray_serve_replica_processing_queries",
    "ray_serve_deployment_queued_queries",
    "ray_serve_num_ongoing_requests_at_replicas",
    "ray_serve_deployment_processing_latency_ms_bucket",
    "ray_serve_deployment_processing_latency_ms_sum",
    "ray_serve_deployment_processing_latency_ms_count",
    "ray_serve_deployment_request_counter_total",
    "ray_serve_deployment_error_counter_total",
}


def _exported(name: str, kind: str) -> set[str]:
    """The Prometheus series names Ray exports for one ray.util.metrics metric."""
    base = f"ray_{name}"
    if kind == "histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    if kind == "counter" and not base.endswith("_total"):
        return {f"{base}_total"}
    return {base}


ALLOWED_METRICS = SERVE_METRICS.union(*(_exported(n, k) for n, k in AVATAR_METRICS.items()))


# --- helpers --------------------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _k8s_documents() -> list[dict[str, Any]]:
    with RAYSERVICE.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _rayservice() -> dict[str, Any]:
    (rayservice,) = [d for d in _k8s_documents() if d["kind"] == "RayService"]
    return rayservice


def _serve_configs() -> dict[str, dict[str, Any]]:
    return {
        "local": _yaml(LOCAL_SERVE),
        "gpu": _yaml(GPU_SERVE),
        "rayservice": yaml.safe_load(_rayservice()["spec"]["serveConfigV2"]),
    }


SERVE_CONFIG_NAMES = ("local", "gpu", "rayservice")


@pytest.fixture(scope="module")
def serve_configs() -> dict[str, dict[str, Any]]:
    return _serve_configs()


def _app(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = config["applications"]
    return app


def _deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [d for d in _app(config)["deployments"] if d["name"] == name]
    assert len(matches) == 1, f"expected one {name} entry, found {len(matches)}"
    return matches[0]


def _app_config(config: dict[str, Any]):
    args = _app(config).get("args", {})
    return load_config(
        args.get("profile", "local"), env={}, overrides=nest_dotted(args.get("overrides") or {})
    )


def _replica_range(dep: dict[str, Any]) -> tuple[int, int]:
    auto = dep.get("autoscaling_config")
    if auto:
        return auto.get("min_replicas", 1), auto["max_replicas"]
    return dep.get("num_replicas", 1), dep.get("num_replicas", 1)


def _gpu_demand(config: dict[str, Any]) -> tuple[float, float]:
    """GPUs the application needs with every deployment at its minimum and its maximum."""
    low = high = 0.0
    for dep in _app(config)["deployments"]:
        gpus = dep.get("ray_actor_options", {}).get("num_gpus", 0) or 0
        lo_n, hi_n = _replica_range(dep)
        low += gpus * lo_n
        high += gpus * hi_n
    return low, high


# --- Serve configs (local, gpu, and the RayService's inline copy) ---------------------------


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_serve_config_is_a_valid_serve_deploy_schema(serve_configs, name):
    schema = ServeDeploySchema.model_validate(serve_configs[name])
    (app,) = schema.applications
    assert app.name == "avatar"
    assert app.route_prefix == "/"
    assert schema.http_options.port == 8000


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_serve_config_names_only_deployments_the_app_creates(serve_configs, name):
    names = [d["name"] for d in _app(serve_configs[name])["deployments"]]
    assert len(names) == len(set(names)), f"duplicate deployment entries: {names}"
    # `serve deploy` rejects an override for a deployment the application does not create.
    assert set(names) <= set(DEPLOYMENT_NAMES), set(names) - set(DEPLOYMENT_NAMES)


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_serve_config_imports_the_app_builder(serve_configs, name):
    assert _app(serve_configs[name])["import_path"] == IMPORT_PATH


def test_import_path_resolves_to_a_callable():
    module_name, _, attr = IMPORT_PATH.partition(":")
    module = pytest.importorskip(module_name)
    assert callable(getattr(module, attr))


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_app_builder_creates_every_configured_deployment(serve_configs, name):
    # What `serve deploy` does before applying the config's overrides, without a cluster:
    # call the builder with the config's args and build the deployment graph.
    app_module = pytest.importorskip("cluster.app")
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app as build_serve_app

    from models.errors import BackendUnavailable

    app = _app(serve_configs[name])
    try:
        application = call_user_app_builder_with_args_if_necessary(
            app_module.build_app, app["args"]
        )
    except BackendUnavailable:
        # The vllm backend needs the gpu extra (Ray Serve LLM); its deployment is named
        # "LLM" either way, so the graph's names are checked with the embedded answerer.
        args = {**app["args"], "overrides": {**app["args"].get("overrides", {}),
                                             "models.llm.backend": "kb"}}
        application = call_user_app_builder_with_args_if_necessary(app_module.build_app, args)
    built = {d.name for d in build_serve_app(application, name=app["name"]).deployments}
    assert {d["name"] for d in app["deployments"]} <= built


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_serve_config_args_name_a_profile_and_valid_overrides(serve_configs, name):
    # Unknown profile names and misspelt override keys fail here, not at `serve deploy`.
    config = _app_config(serve_configs[name])
    assert config.profile == _app(serve_configs[name])["args"]["profile"]


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_renderer_drains_live_sessions_before_shutdown(serve_configs, name):
    renderer = _deployment(serve_configs[name], "Renderer")
    assert renderer["graceful_shutdown_timeout_s"] >= MIN_RENDERER_DRAIN_S


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_renderer_accepts_every_call_of_its_sessions(serve_configs, name):
    renderer = _deployment(serve_configs[name], "Renderer")
    sessions = _app_config(serve_configs[name]).deployments.renderer.sessions_per_replica
    assert sessions is not None
    assert renderer["max_ongoing_requests"] >= CALLS_PER_SESSION * sessions, (
        f"Renderer max_ongoing_requests {renderer['max_ongoing_requests']} < "
        f"{CALLS_PER_SESSION} x {sessions} sessions per replica"
    )


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_renderer_limit_agrees_with_the_profile_the_app_checks(serve_configs, name):
    # The application validates the profile's value at build time; Serve runs the config's.
    renderer = _deployment(serve_configs[name], "Renderer")
    profile = _app_config(serve_configs[name]).deployments.renderer
    assert renderer["max_ongoing_requests"] == profile.max_ongoing_requests


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_app_accepts_the_configured_profile(serve_configs, name):
    app = pytest.importorskip("cluster.app")
    check = getattr(app, "check_deployable", None)
    if check is None:
        pytest.skip("cluster.app has no check_deployable")
    check(_app_config(serve_configs[name]))


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_several_knowledge_replicas_share_a_qdrant_server(serve_configs, name):
    knowledge = _deployment(serve_configs[name], "Knowledge")
    if _replica_range(knowledge)[1] > 1:
        # Qdrant local mode locks its directory to one process.
        assert _app_config(serve_configs[name]).models.knowledge.qdrant_url


@pytest.mark.parametrize("name", SERVE_CONFIG_NAMES)
def test_renderer_replica_count_is_fixed(serve_configs, name):
    renderer = _deployment(serve_configs[name], "Renderer")
    # Autoscaling would stop replicas that hold live sessions.
    assert "autoscaling_config" not in renderer
    assert isinstance(renderer["num_replicas"], int) and renderer["num_replicas"] >= 1


def test_local_config_fits_two_cpu_cores_without_gpus(serve_configs):
    config = serve_configs["local"]
    total_cpus = 0.0
    for dep in _app(config)["deployments"]:
        options = dep.get("ray_actor_options", {})
        assert not options.get("num_gpus"), f"{dep['name']} asks for a GPU"
        assert "num_cpus" in options, f"{dep['name']} would take a whole core by default"
        total_cpus += options["num_cpus"] * _replica_range(dep)[1]
    assert total_cpus <= LOCAL_CORES - 0.5  # room for the controller, proxy and raylet
    assert config["http_options"]["host"] == "127.0.0.1"


def test_gpu_config_gives_each_renderer_a_whole_gpu(serve_configs):
    renderer = _deployment(serve_configs["gpu"], "Renderer")
    assert renderer["ray_actor_options"]["num_gpus"] == 1


@pytest.mark.parametrize("name", ["LLM", "ASR", "TTS"])
def test_gpu_streaming_deployments_autoscale_below_their_limit(serve_configs, name):
    dep = _deployment(serve_configs["gpu"], name)
    auto = dep["autoscaling_config"]
    assert 1 <= auto["min_replicas"] < auto["max_replicas"]
    # The target must sit below the hard limit, or a replica is full before scaling starts.
    assert auto["target_ongoing_requests"] < dep["max_ongoing_requests"]


# --- KubeRay RayService ---------------------------------------------------------------------


def _groups(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def _gpu_group(rayservice: dict[str, Any]) -> dict[str, Any]:
    gpu_groups = [
        g for g in _groups(rayservice).values()
        if any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in _containers(g))
    ]
    assert len(gpu_groups) == 1
    return gpu_groups[0]


def test_rayservice_inline_serve_config_is_the_gpu_config(serve_configs):
    assert serve_configs["rayservice"] == serve_configs["gpu"]


def test_rayservice_cluster_shape():
    rs = _rayservice()
    assert (rs["apiVersion"], rs["kind"]) == ("ray.io/v1", "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert RAY_IMAGE.split(":")[1].startswith(cluster["rayVersion"])

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (head_container,) = _containers(head)
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    head_ports = {p["containerPort"] for p in head_container["ports"]}
    assert {6379, 8265, 8000, 8080} <= head_ports

    for group in [head, *_groups(rs).values()]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        for container in _containers(group):
            assert container["image"] == RAY_IMAGE
            assert {8000, 8080} <= {p["containerPort"] for p in container["ports"]}
    for group in _groups(rs).values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    cpu_groups = [g for g in _groups(rs).values() if g is not _gpu_group(rs)]
    assert cpu_groups, "no CPU worker group for Gateway/Knowledge"


def test_rayservice_gpu_group_requests_one_gpu_per_pod():
    group = _gpu_group(_rayservice())
    assert group["rayStartParams"]["num-gpus"] == "1"
    (container,) = _containers(group)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1


def test_rayservice_gpu_group_covers_the_serve_config(serve_configs):
    group = _gpu_group(_rayservice())
    low, high = _gpu_demand(serve_configs["rayservice"])
    # Minimum demand up without waiting for the autoscaler; maximum demand reachable.
    assert math.ceil(low) <= group["minReplicas"]
    assert math.ceil(high) <= group["maxReplicas"]


def test_rayservice_pods_outlive_the_serve_drain(serve_configs):
    # Kubernetes kills a pod after terminationGracePeriodSeconds (default 30 s): it must wait
    # longer than Serve drains the replicas that pod can hold.
    rs = _rayservice()
    deployments = _app(serve_configs["rayservice"])["deployments"]
    gpu_group = _gpu_group(rs)
    for group in _groups(rs).values():
        holds = [
            d for d in deployments
            if group is gpu_group or not d.get("ray_actor_options", {}).get("num_gpus")
        ]
        drain = max(d.get("graceful_shutdown_timeout_s", 20) for d in holds)
        grace = group["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain, f"group {group['groupName']}: {grace} s <= {drain} s"


def test_shared_servers_are_kubernetes_services(serve_configs):
    config = _app_config(serve_configs["rayservice"])
    services = {
        d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]}
        for d in _k8s_documents() if d["kind"] == "Service"
    }
    for url in (config.cluster.session_store_url, config.models.knowledge.qdrant_url):
        assert url, "a multi-node cluster needs the shared session store and Qdrant server"
        parsed = urlparse(url)
        assert parsed.port in services.get(parsed.hostname, set()), f"no Service for {url}"


# --- cluster launcher -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher_schema() -> dict[str, Any]:
    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_launcher_config_validates_against_rays_schema(launcher_schema):
    jsonschema.validate(_yaml(LAUNCHER), launcher_schema)


@pytest.mark.parametrize(
    "breakage",
    ["no_provider", "unknown_key", "gpu_as_string", "node_type_without_node_config"],
)
def test_broken_launcher_config_fails_the_schema(launcher_schema, breakage):
    config = copy.deepcopy(_yaml(LAUNCHER))
    if breakage == "no_provider":
        del config["provider"]
    elif breakage == "unknown_key":
        config["max_worker"] = 3
    elif breakage == "gpu_as_string":
        config["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "1"
    else:
        del config["available_node_types"]["cpu_worker"]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, launcher_schema)


def test_launcher_node_types_fit_the_gpu_serve_config(serve_configs):
    config = _yaml(LAUNCHER)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] == "us-east-1"
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0

    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1
    low, high = _gpu_demand(serve_configs["gpu"])
    assert math.ceil(low) <= gpu["min_workers"]
    assert math.ceil(high) <= gpu["max_workers"]
    assert types["cpu_worker"]["resources"].get("GPU", 0) == 0


def test_launcher_runs_the_shared_servers_on_the_head(serve_configs):
    launcher = _yaml(LAUNCHER)
    config = _app_config(serve_configs["gpu"])
    head_init = " ".join(launcher["available_node_types"]["head"]["initialization_commands"])
    head_setup = " ".join(launcher["head_setup_commands"])
    worker_setup = " ".join(launcher["worker_setup_commands"])
    for url in (config.cluster.session_store_url, config.models.knowledge.qdrant_url):
        parsed = urlparse(url)
        assert f"-p {parsed.port}:" in head_init, f"nothing listens on {url} on the head"
        assert parsed.hostname in head_setup and parsed.hostname in worker_setup
    assert "$RAY_HEAD_IP" in worker_setup


def test_launcher_installs_the_project_and_exports_metrics():
    config = _yaml(LAUNCHER)
    assert any("pip install" in c and "avatar-cluster" in c for c in config["setup_commands"])
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    for start in (head_start, worker_start):
        assert "--metrics-export-port=8080" in start
    assert "--num-cpus=0" in head_start
    assert config["docker"]["image"] == RAY_IMAGE


# --- Grafana dashboard ----------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (not functions, labels or label values)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    return {m for m in _IDENTIFIER.findall(text) if m.lower() not in _KEYWORDS}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_metric_name_extraction_ignores_functions_and_labels():
    expr = (
        'histogram_quantile(0.95, sum by (stage, le) '
        '(rate(ray_avatar_stage_latency_ms_bucket{stage=~"asr|turn"}[5m]))) '
        "/ on() sum(ray_avatar_sessions) * 60"
    )
    assert _metric_names(expr) == {"ray_avatar_stage_latency_ms_bucket", "ray_avatar_sessions"}
    # A misspelt metric is reported, so the allow-list check below can fail.
    misspelt = _metric_names("sum by (replica) (rate(ray_avatar_frames_renderd_total[1m]))")
    assert misspelt == {"ray_avatar_frames_renderd_total"}
    assert not misspelt <= ALLOWED_METRICS


def test_dashboard_structure(dashboard):
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"] and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel.get("title"), f"panel {panel['id']} has no title"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"


def test_dashboard_reads_only_known_metrics(dashboard):
    for expr in _exprs(dashboard):
        names = _metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= ALLOWED_METRICS, f"unknown metric {names - ALLOWED_METRICS} in {expr!r}"


def test_dashboard_shows_every_application_metric(dashboard):
    used = set().union(*(_metric_names(e) for e in _exprs(dashboard)))
    for name, kind in AVATAR_METRICS.items():
        assert used & _exported(name, kind), f"{name} is on no panel"


def test_dashboard_stage_selectors_name_real_stages(dashboard):
    for expr in _exprs(dashboard):
        for stage in re.findall(r'stage="([^"]*)"', expr):
            assert stage in STAGES, f"unknown stage {stage!r} in {expr!r}"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables["stage"]["query"].split(",")) == STAGES


def test_allowed_serve_metrics_exist_in_ray_serve():
    serve_dir = Path(ray.serve.__file__).parent
    sources = "\n".join(
        p.read_text(encoding="utf-8", errors="replace") for p in serve_dir.rglob("*.py")
        if "tests" not in p.parts
    )
    for exported in SERVE_METRICS:
        base = re.sub(r"_(bucket|sum|count|total)$", "", exported.removeprefix("ray_"))
        assert f'"{base}"' in sources, f"{exported}: Ray Serve defines no metric {base!r}"
