"""ICE servers handed to a session: STUN as configured, TURN with REST-scheme credentials
that a TURN server sharing the secret accepts until they expire."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from configs.schema import WebRTCConfig
from deployments.media.ice import ice_servers, turn_credentials
from models.errors import ConfigError

pytestmark = pytest.mark.unit


def test_no_servers_by_default_and_stun_as_configured():
    assert ice_servers(WebRTCConfig(), "s1") == []
    config = WebRTCConfig(stun_urls=("stun:stun.example.org:3478",))
    assert ice_servers(config, "s1") == [{"urls": ["stun:stun.example.org:3478"]}]


def test_turn_credentials_follow_the_rest_scheme_and_expire():
    config = WebRTCConfig(turn_urls=("turn:turn.example.org:3478",), turn_secret_env="TS",
                          turn_ttl_s=600)
    (turn,) = ice_servers(config, "r1.abc", env={"TS": "s3cret"}, clock=lambda: 1_000_000.0)
    assert turn["username"] == "1000600:r1.abc"
    expected = hmac.new(b"s3cret", b"1000600:r1.abc", hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
    user, password = turn_credentials("s3cret", "r1.abc", 600, now_s=1_000_000.0)
    other_secret = turn_credentials("other", "r1.abc", 600, now_s=1_000_000.0)
    assert (user, password) == (turn["username"], turn["credential"])
    assert other_secret[1] != password


def test_turn_without_a_secret_is_a_config_error():
    with pytest.raises(ConfigError, match="turn_secret_env"):
        ice_servers(WebRTCConfig(turn_urls=("turn:t:3478",)), "s")
    with pytest.raises(ConfigError, match="TS"):
        ice_servers(WebRTCConfig(turn_urls=("turn:t:3478",), turn_secret_env="TS"), "s", env={})
