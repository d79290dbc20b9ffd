"""A region's load report to the global entry (:mod:`cluster.placement.entry`).

Every ``interval_s`` the Gateway posts the region's active sessions (all tenants, from the
session store every renderer writes to) and its renderer capacity to
``<entry>/v1/regions/<region>/report``. A failed post is logged and retried at the next
interval; the entry drains a region whose reports stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from configs.schema import AppConfig

log = logging.getLogger(__name__)


def region_capacity(config: AppConfig) -> int:
    """Sessions this region's renderers hold: fixed replicas x sessions per replica."""
    renderer = config.deployments.renderer
    replicas = renderer.num_replicas if isinstance(renderer.num_replicas, int) \
        else renderer.max_replicas
    return replicas * (renderer.sessions_per_replica or 8)


async def report_loop(config: AppConfig, *, http: Any = None, store: Any = None) -> None:
    """Post load reports until cancelled (nothing to do without ``cluster.placement_entry_url``)."""
    import httpx

    from deployments.session_store import open_session_store

    cluster = config.cluster
    if not cluster.placement_entry_url:
        return
    url = f"{cluster.placement_entry_url.rstrip('/')}/v1/regions/{cluster.region}/report"
    key = os.environ.get(cluster.placement_report_key_env or "", "")
    headers = {"X-Region-Key": key} if key else {}
    store = store or open_session_store(cluster)
    client = http or httpx.AsyncClient(timeout=5.0)
    capacity = region_capacity(config)
    try:
        while True:
            try:
                active = len(await asyncio.to_thread(store.active_sessions))
                reply = await client.post(url, headers=headers, json={
                    "active_sessions": active, "capacity_sessions": capacity})
                if reply.status_code >= 300:
                    log.warning("load report to %s answered %s: %.200s", url,
                                reply.status_code, reply.text)
            except Exception as exc:  # the entry may be down: try again next time
                log.warning("load report to %s failed: %s", url, exc)
            await asyncio.sleep(cluster.placement_report_interval_s)
    finally:
        if http is None:
            await client.aclose()
