"""``avatarctl plan --emit``: worker-group sizes written into copies of the KubeRay and cluster
launcher manifests that the tools reading them still accept, and the repository's files left
alone."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.serve.schema import ServeDeploySchema

from cluster.plan.emit import GPU_SERVE, LAUNCHER, RAYSERVICE, emit
from cluster.plan.figures import DEFAULT_MEASURED, load_measured
from cluster.plan.inputs import (
    DEFAULT_PRICING,
    DEFAULT_TRAFFIC,
    load_pricing,
    load_traffic,
    traffic_from_dict,
)
from cluster.plan.solve import make_plan
from configs.loader import load_config
from models.errors import InputError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def measured():
    return load_measured(DEFAULT_MEASURED)


@pytest.fixture(scope="module")
def repo_digest() -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (RAYSERVICE, LAUNCHER,
                                                                      GPU_SERVE)}


def _region(measured, name: str = "aws-us-east-1", **fleet: Any):
    profile = load_traffic(DEFAULT_TRAFFIC)
    if fleet:
        profile = profile.model_copy(update={"fleet": profile.fleet.model_copy(update=fleet)})
    plan = make_plan(profile, load_pricing(DEFAULT_PRICING), measured)
    return next(r for r in plan.regions if r.name == name), profile


def _app(serve: dict[str, Any]) -> dict[str, Any]:
    (app,) = serve["applications"]
    return app


def _deployment(serve: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in _app(serve)["deployments"] if d["name"] == name)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _check_serve_config(serve: dict[str, Any], sessions: int, renderers: int) -> None:
    ServeDeploySchema.model_validate(serve)
    args = _app(serve)["args"]
    config = load_config(args["profile"], env={}, overrides=_nest(args["overrides"]))
    assert config.deployments.renderer.sessions_per_replica == sessions
    renderer = _deployment(serve, "Renderer")
    assert renderer["num_replicas"] == renderers
    assert renderer["max_ongoing_requests"] == config.deployments.renderer.max_ongoing_requests
    assert renderer["max_ongoing_requests"] >= 4 * sessions  # what the app checks at start


def _gpu_demand(serve: dict[str, Any]) -> tuple[float, float]:
    low = high = 0.0
    for dep in _app(serve)["deployments"]:
        gpus = dep.get("ray_actor_options", {}).get("num_gpus", 0) or 0
        if dep["name"] == "LLM":
            gpus = 1
        auto = dep.get("autoscaling_config")
        lo, hi = (auto["min_replicas"], auto["max_replicas"]) if auto else (
            dep["num_replicas"],) * 2
        low, high = low + gpus * lo, high + gpus * hi
    return low, high


def test_kuberay_copy_is_sized_and_valid(measured, repo_digest, tmp_path: Path) -> None:
    region, profile = _region(measured)
    out = tmp_path / "rayservice.yaml"
    result = emit("kuberay", region, profile, out)
    assert result.paths == [out]
    text = out.read_text()
    assert "# KubeRay RayService for avatar-cluster" in text  # comments kept
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs].count("Service") == 2
    (rs,) = [d for d in docs if d["kind"] == "RayService"]
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    renderer = region.pool("renderer")
    sessions = region.renderer.sessions_per_node
    _check_serve_config(serve, sessions, renderer.min_nodes)  # hourly: the overnight floor

    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu, cpu = groups["gpu"], groups["cpu"]
    low, high = _gpu_demand(serve)
    assert gpu["minReplicas"] == gpu["replicas"] == max(math.ceil(low),
                                                        region.worker_groups()["gpu"][0])
    # Room for the Renderer raised to its peak with every other GPU deployment at its max.
    assert gpu["maxReplicas"] >= math.ceil(high) + renderer.max_nodes - renderer.min_nodes
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == region.worker_groups()["cpu"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    offer = region.prices.gpus[region.renderer.gpu]
    assert limits["cpu"] == str(int(offer.vcpus_per_gpu) - 1)
    assert limits["nvidia.com/gpu"] == 1
    assert result.groups["gpu"] == {"min": gpu["minReplicas"], "max": gpu["maxReplicas"]}
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in repo_digest} == repo_digest


def test_fixed_renderers_run_at_the_peak(measured, tmp_path: Path) -> None:
    region, profile = _region(measured, renderer_scaling="fixed")
    emit("kuberay", region, profile, tmp_path / "rs.yaml")
    (rs,) = [d for d in yaml.safe_load_all((tmp_path / "rs.yaml").read_text())
             if d and d["kind"] == "RayService"]
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert _deployment(serve, "Renderer")["num_replicas"] == region.pool("renderer").max_nodes


def test_launcher_copy_validates_against_rays_schema(measured, repo_digest,
                                                     tmp_path: Path) -> None:
    region, profile = _region(measured, gpu_types=("H100",))
    out = tmp_path / "aws.yaml"
    result = emit("ray-launcher", region, profile, out)
    config = yaml.safe_load(out.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    gpu = config["available_node_types"]["gpu_worker"]
    # p5.48xlarge carries 8 H100s: GPU nodes are counted in instances of 8.
    assert gpu["node_config"]["InstanceType"] == "p5.48xlarge"
    assert gpu["resources"] == {"CPU": 192, "GPU": 8}
    assert gpu["max_workers"] == math.ceil(result.groups["gpu"]["max"]) >= 1
    cpu = config["available_node_types"]["cpu_worker"]
    assert cpu["node_config"]["InstanceType"] == "c7i.2xlarge"
    assert config["max_workers"] == gpu["max_workers"] + cpu["max_workers"]
    assert config["provider"]["region"] == "us-east-1"
    serve = yaml.safe_load(result.paths[1].read_text())
    _check_serve_config(serve, region.renderer.sessions_per_node,
                        region.pool("renderer").min_nodes)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in repo_digest} == repo_digest


def test_launcher_refuses_a_non_aws_region(measured, tmp_path: Path) -> None:
    profile = traffic_from_dict({"regions": {"gcp-us-central1": {"peak_sessions": 100}}})
    plan = make_plan(profile, load_pricing(DEFAULT_PRICING), measured)
    with pytest.raises(InputError, match=r"writes an AWS config; region gcp-us-central1 is on "
                       r"gcp.*--emit kuberay"):
        emit("ray-launcher", plan.regions[0], profile, tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()
