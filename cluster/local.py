"""Start and stop the app on a Ray cluster: a local one on this machine, or an existing one.

``with serve_app(config) as url:`` starts Ray (a local instance unless
``cluster.ray_address`` names one; fake GPUs from ``cluster.num_fake_gpus``), starts Serve's
HTTP proxy on ``cluster.http_host:http_port``, deploys the application and yields its URL;
leaving the block shuts Serve and the Ray it started down.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from configs.schema import AppConfig

Progress = Callable[[str], None]


def start_ray(config: AppConfig) -> bool:
    """Connect to ``cluster.ray_address`` or start a local Ray; True when this call started it."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    if ray.is_initialized():
        return False
    c = config.cluster
    if c.ray_address:
        ray.init(address=c.ray_address, log_to_driver=False)
        return True
    kwargs: dict[str, object] = {}
    if c.metrics_port:
        kwargs["_metrics_export_port"] = c.metrics_port
    ray.init(address="local", num_cpus=c.num_cpus, num_gpus=c.num_fake_gpus,
             include_dashboard=False, object_store_memory=c.object_store_mb * 1024 * 1024,
             log_to_driver=False, **kwargs)
    return True


@contextmanager
def serve_app(config: AppConfig, progress: Progress | None = None) -> Iterator[str]:
    """Deploy the application; yields ``http://host:port``."""
    from cluster.app import APP_NAME, build_application

    say = progress or (lambda _msg: None)
    say("starting Ray")
    started = start_ray(config)
    from ray import serve

    try:
        c = config.cluster
        say("starting Serve")
        serve.start(http_options={"host": c.http_host, "port": c.http_port})
        say("deploying (models load in every replica)")
        serve.run(build_application(config), name=APP_NAME, route_prefix="/")
        yield f"http://{c.http_host}:{c.http_port}"
    finally:
        say("shutting down")
        # Ray prints its actors' exit notices to stdout while it stops: keep stdout for the
        # caller's output (a benchmark's JSON).
        with contextlib.redirect_stdout(sys.stderr):
            serve.shutdown()
            if started:
                import ray

                ray.shutdown()
