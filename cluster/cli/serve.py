"""``avatarctl serve``: the whole cluster on this machine (or an existing Ray cluster)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import typer
from rich.table import Table

from cluster.cli.common import ConfigOption, console, friendly_errors, load, out


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    config: str = ConfigOption,
    host: str | None = typer.Option(None, help="HTTP host (default: cluster.http_host)."),
    port: int | None = typer.Option(None, help="HTTP port (default: cluster.http_port, 8000)."),
    renderers: int | None = typer.Option(
        None, help="Renderer replicas (default: deployments.renderer.num_replicas; one per "
        "GPU on GPU nodes)."),
    fake_gpus: int | None = typer.Option(
        None, help="Pretend this machine has N GPUs (a local Ray only): renderers then take "
        "one each, as on a GPU node."),
    ray_address: str | None = typer.Option(
        None, help="Deploy onto this running Ray cluster instead of starting a local one."),
) -> None:
    """Start the avatar cluster and serve it until Ctrl-C.

    Starts a local Ray (or joins --ray-address), deploys the Gateway, the renderer replicas
    and the shared ASR, LLM, TTS and Knowledge deployments, and prints the URLs: the web
    client at /, the API docs at /docs and Prometheus metrics at /metrics. Ctrl-C stops
    everything cleanly.
    """
    from cluster.local import serve_app

    cfg = load(config)
    cluster: dict[str, Any] = {}
    if host is not None:
        cluster["http_host"] = host
    if port is not None:
        cluster["http_port"] = port
    if fake_gpus is not None:
        cluster["num_fake_gpus"] = fake_gpus
    if ray_address is not None:
        cluster["ray_address"] = ray_address
    updates: dict[str, Any] = {"cluster": cfg.cluster.model_copy(update=cluster)}
    if renderers is not None or fake_gpus:
        renderer = cfg.deployments.renderer.model_copy(update={
            "num_replicas": renderers if renderers is not None else fake_gpus,
            **({"num_gpus": 1.0, "num_cpus": 0.0} if fake_gpus else {}),
        })
        updates["deployments"] = cfg.deployments.model_copy(update={"renderer": renderer})
    cfg = cfg.model_copy(update=updates)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with friendly_errors(), console.status("starting the cluster") as status:
        context = serve_app(cfg, progress=lambda step: status.update(f"starting: {step}"))
        url = context.__enter__()
    try:
        _print_urls(cfg, url)
        while not stop.wait(0.5):
            pass
        console.print("stopping ...")
    finally:
        context.__exit__(None, None, None)
    console.print("stopped.")


def _print_urls(cfg: Any, url: str) -> None:
    d = cfg.deployments
    table = Table(title="avatar-cluster is running", show_header=False)
    table.add_row("web client", f"{url}/")
    table.add_row("API docs", f"{url}/docs")
    table.add_row("metrics", f"{url}/metrics")
    sessions = (d.renderer.sessions_per_replica or 8) * int(d.renderer.num_replicas)
    table.add_row("renderers", f"{d.renderer.num_replicas} x "
                  f"{d.renderer.sessions_per_replica or 8} sessions = {sessions}")
    table.add_row("stop", "Ctrl-C")
    out.print(table)
