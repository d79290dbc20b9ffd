"""Session tokens, API keys and admission limits for the Gateway.

* **Session tokens** (:class:`SessionTokens`): creating a session returns a JWT (HS256, PyJWT)
  scoped to that session, its tenant and this region, valid for ``cluster.auth.token_ttl_s``.
  Every later call on the session presents it. Decoding pins the algorithm (``alg: none`` and
  algorithm swaps are refused), requires every claim, and checks audience, issuer, expiry and
  not-before with a 5 s leeway for clock skew.
* **API keys** (:class:`ApiKeys`): a YAML file of ``{tenant, roles, sha256}`` entries; only
  digests are stored and keys are compared in constant time. Roles: ``client`` (create
  sessions when ``require_api_key``), ``ingest`` (a tenant's knowledge bases), ``admin``.
* **Admission** (:class:`Admission`): token buckets per client address and per tenant for new
  sessions (429 with Retry-After), in this gateway process.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from configs.schema import AdmissionConfig, AuthConfig
from models.errors import AuthError, ConfigError, RateLimited

ISSUER = "avatar-cluster"
AUDIENCE = "avatar-session"
ALGORITHM = "HS256"
LEEWAY_S = 5
MIN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 2048
RESUME_GRACE_S = 86400.0
"""How long after its token expired a session may still be resumed with it."""
ROLES = ("client", "ingest", "admin")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid session token grants."""

    session_id: str
    tenant: str
    region: str
    expires_at_s: float


def signing_key(config: AuthConfig) -> bytes:
    """The key from ``config.signing_key_env``, or a fresh random one when it is unset."""
    value = os.environ.get(config.signing_key_env, "")
    if not value:
        return secrets.token_bytes(MIN_KEY_BYTES)
    key = value.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{config.signing_key_env} holds {len(key)} bytes; a signing key "
                          f"needs at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)")
    return key


class SessionTokens:
    """Issues and checks session tokens for one region."""

    def __init__(self, key: bytes, region: str, ttl_s: int = 3600, *,
                 clock: Clock = time.time) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"token signing key is {len(key)} bytes; use at least "
                              f"{MIN_KEY_BYTES}")
        self._key = key
        self.region = region
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, session_id: str, tenant: str) -> str:
        import jwt

        now = int(self._clock())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": session_id, "tenant": tenant,
                  "region": self.region, "iat": now, "nbf": now, "exp": now + self.ttl_s,
                  "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify_resume(self, token: str | None, session_id: str) -> Claims:
        """:meth:`verify` for resuming ``session_id``: its token proves the caller held that
        session, and may have expired up to :data:`RESUME_GRACE_S` ago."""
        return self.verify(token, session_id, expired_grace_s=RESUME_GRACE_S)

    def verify(self, token: str | None, session_id: str, *, expired_grace_s: float = 0.0
               ) -> Claims:
        """The token's claims if it is valid for ``session_id`` in this region; else
        :class:`AuthError` saying what is wrong (401, or 403 for another session/region)."""
        import jwt

        if not token:
            raise AuthError("this session needs its token: send the `token` from POST "
                            "/v1/sessions as `Authorization: Bearer <token>` (or ?token=)")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError(f"token is over {MAX_TOKEN_CHARS} characters; send the one POST "
                            "/v1/sessions returned")
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "nbf", "iat", "sub", "aud", "iss"],
                         "verify_exp": expired_grace_s <= 0},
            )
            if expired_grace_s > 0 and not (isinstance(claims["exp"], int | float) and
                                            claims["exp"] + expired_grace_s >= self._clock()):
                raise jwt.ExpiredSignatureError("expired beyond the resume grace")
        except jwt.ExpiredSignatureError:
            raise AuthError("session token expired; create a new session (with "
                            '{"resume": <id>} to keep the conversation)') from None
        except jwt.ImmatureSignatureError:
            raise AuthError("session token is not valid yet; check this machine's clock") \
                from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid session token ({type(exc).__name__}); send the token "
                            "POST /v1/sessions returned") from None
        sub, tenant, region = claims.get("sub"), claims.get("tenant"), claims.get("region")
        if not all(isinstance(v, str) for v in (sub, tenant, region)):
            raise AuthError("invalid session token (claims missing); send the token POST "
                            "/v1/sessions returned")
        if region != self.region:
            raise AuthError(f"this token is for region {region!r}, not {self.region!r}; use "
                            "the region's own gateway", status=403)
        if sub != session_id:
            raise AuthError("this token belongs to another session", status=403)
        return Claims(sub, tenant, region, float(claims["exp"]))


@dataclass(frozen=True, slots=True)
class KeyGrant:
    tenant: str
    roles: frozenset[str]


class ApiKeys:
    """API keys by SHA-256 digest (the file never holds a key itself)."""

    def __init__(self, grants: dict[str, KeyGrant]) -> None:
        self._grants = grants

    @classmethod
    def load(cls, path: str | None) -> ApiKeys:
        if path is None:
            return cls({})
        try:
            entries = yaml.safe_load(Path(path).read_text()) or []
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"API keys file {path}: {exc}") from None
        return cls.from_entries(entries, path)

    @classmethod
    def from_entries(cls, entries: Iterable[Any], source: str = "API keys") -> ApiKeys:
        grants: dict[str, KeyGrant] = {}
        for i, entry in enumerate(entries if isinstance(entries, list) else [None]):
            where = f"{source}, entry {i + 1}"
            if not isinstance(entry, dict) or set(entry) != {"tenant", "roles", "sha256"}:
                raise ConfigError(f"{where}: each entry is {{tenant, roles, sha256}}")
            digest, roles = str(entry["sha256"]).lower(), entry["roles"]
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"{where}: sha256 must be the 64-hex-digit digest of the key "
                                  "(`printf %s KEY | sha256sum`)")
            if not isinstance(roles, list) or not roles or set(roles) - set(ROLES):
                raise ConfigError(f"{where}: roles must be a non-empty list of {ROLES}")
            grants[digest] = KeyGrant(str(entry["tenant"]), frozenset(roles))
        return cls(grants)

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def check(self, key: str | None, role: str, tenant: str | None = None) -> KeyGrant:
        """The grant of ``key`` if it has ``role`` (and belongs to ``tenant`` when given)."""
        if not self._grants:
            raise AuthError("no API keys are configured on this cluster "
                            "(cluster.auth.api_keys_file)", status=403)
        if not key:
            raise AuthError(f"this route needs an API key with the {role} role: send it as "
                            "`X-API-Key: <key>`")
        digest = self.digest(key)
        grant = None
        for known, candidate in self._grants.items():  # constant time per comparison
            if hmac.compare_digest(known, digest):
                grant = candidate
        if grant is None:
            raise AuthError("unknown API key")
        if role not in grant.roles:
            raise AuthError(f"this API key lacks the {role} role", status=403)
        if tenant is not None and grant.tenant != tenant:
            raise AuthError(f"this API key belongs to another tenant than {tenant!r}",
                            status=403)
        return grant


class _Buckets:
    """Token buckets by key (LRU-bounded so a flood of addresses cannot grow it)."""

    def __init__(self, per_minute: float, burst: int, clock: Clock, size: int = 65536) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.size = size
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 if a token was taken, else the seconds until one is free."""
        now = self.clock()
        tokens, at = self._state.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._state[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._state) > self.size:
            self._state.popitem(last=False)
        return wait


class Admission:
    """New-session limits per client address and per tenant."""

    def __init__(self, config: AdmissionConfig, *, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._ip = _Buckets(config.sessions_per_minute_per_ip, config.burst, clock)
        tenant_burst = max(config.burst, math.ceil(config.sessions_per_minute_per_tenant / 6))
        self._tenant = _Buckets(config.sessions_per_minute_per_tenant, tenant_burst, clock)

    def admit(self, client_ip: str, tenant: str) -> None:
        """Take one new session for ``client_ip`` and ``tenant``, or :class:`RateLimited`."""
        wait = self._ip.take(client_ip)
        if wait > 0:
            raise RateLimited(f"too many new sessions from {client_ip}; retry in "
                              f"{math.ceil(wait)} s", wait)
        wait = self._tenant.take(tenant)
        if wait > 0:
            raise RateLimited(f"tenant {tenant!r} is starting sessions faster than its limit "
                              f"({self.config.sessions_per_minute_per_tenant:g}/min); retry in "
                              f"{math.ceil(wait)} s", wait)
