"""ICE servers for a session: STUN, and TURN with time-limited credentials.

TURN credentials follow the TURN REST scheme (draft-uberti-behave-turn-rest, as coturn's
``use-auth-secret`` implements it): username ``<expiry unix time>:<session id>``, password
``base64(HMAC-SHA1(secret, username))``. The secret never leaves the cluster; a leaked
credential stops working at its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from configs.schema import WebRTCConfig
from models.errors import ConfigError


def turn_credentials(secret: str, session_id: str, ttl_s: int,
                     now_s: float | None = None) -> tuple[str, str]:
    """``(username, password)`` valid for ``ttl_s`` seconds from ``now_s``."""
    expiry = int((time.time() if now_s is None else now_s) + ttl_s)
    username = f"{expiry}:{session_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(config: WebRTCConfig, session_id: str,
                env: Mapping[str, str] | None = None,
                clock: Callable[[], float] = time.time) -> list[dict[str, Any]]:
    """RTCIceServer dicts (``urls``, ``username``, ``credential``) for one session."""
    servers: list[dict[str, Any]] = []
    if config.stun_urls:
        servers.append({"urls": list(config.stun_urls)})
    if config.turn_urls:
        if not config.turn_secret_env:
            raise ConfigError("cluster.webrtc.turn_urls needs turn_secret_env: the name of "
                              "the environment variable holding the TURN shared secret")
        secret = (os.environ if env is None else env).get(config.turn_secret_env)
        if not secret:
            raise ConfigError(f"environment variable {config.turn_secret_env} (the TURN "
                              "shared secret) is not set")
        username, password = turn_credentials(secret, session_id, config.turn_ttl_s, clock())
        servers.append({"urls": list(config.turn_urls), "username": username,
                        "credential": password})
    return servers
