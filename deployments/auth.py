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
* **Tenant quota** (:class:`TenantQuota`): at most ``cluster.admission.max_sessions_per_tenant``
  concurrent sessions per tenant in the region, counted in the shared session store so every
  gateway replica agrees (429 with Retry-After, :class:`QuotaExceeded`).
"""

from __future__ import annotations

import asyncio
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
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from configs.schema import AdmissionConfig, AuthConfig, ClusterConfig
from models.errors import AuthError, ConfigError, InputError, RateLimited

if TYPE_CHECKING:
    from deployments.session_store import SessionStore

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


class QuotaExceeded(RateLimited):
    """The tenant already holds as many concurrent sessions as its quota allows (429)."""


def over_quota(active: int, in_flight: int, limit: int, replaces_own: bool = False) -> bool:
    """Would one more session exceed ``limit``? ``active``: the tenant's active sessions in the
    store; ``in_flight``: its creations this gateway has admitted but not finished;
    ``replaces_own``: the new session resumes (and so closes) one of the active ones."""
    return active - int(replaces_own) + in_flight >= limit


class QuotaSlot:
    """One admitted creation: counts as in flight for its tenant until the block ends."""

    def __init__(self, quota: TenantQuota | None = None, tenant: str = "") -> None:
        self._quota, self._tenant = quota, tenant

    def __enter__(self) -> QuotaSlot:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._quota is not None:
            self._quota._release(self._tenant)
            self._quota = None


class TenantQuota:
    """At most ``limit`` concurrent sessions per tenant, counted in the session store every
    renderer of the region writes to (one COUNT per new session, no record read).

    A creation admitted here counts as in flight from the check until the renderer answers, so
    a burst through one gateway cannot overshoot while the store has not seen its sessions yet
    (it may briefly count one twice: after the renderer stored it and before it answered, which
    errs on refusing). Gateways of one region see each other's sessions once stored. Resuming
    an active session of the same tenant replaces it, so it does not count twice. ``limit``
    None admits everything and reads nothing."""

    def __init__(self, limit: int | None, store: SessionStore | None = None, *,
                 region: str = "local", retry_after_s: float = 5.0) -> None:
        if limit is not None and (limit < 1 or store is None):
            raise ConfigError("a tenant quota needs a limit >= 1 and the session store")
        self.limit, self.store, self.region = limit, store, region
        self.retry_after_s = retry_after_s
        self._in_flight: dict[str, int] = {}

    @classmethod
    def from_config(cls, cluster: ClusterConfig) -> TenantQuota:
        """``cluster.admission.max_sessions_per_tenant`` over ``open_session_store(cluster)``
        (opened only when the quota is set; an unreachable store stops start-up)."""
        limit = cluster.admission.max_sessions_per_tenant
        if limit is None:
            return cls(None)
        from deployments.session_store import open_session_store

        return cls(limit, open_session_store(cluster), region=cluster.region,
                   retry_after_s=cluster.retry_after_s)

    async def reserve(self, tenant: str, resume: str | None = None) -> QuotaSlot:
        """A slot for one new session of ``tenant`` (``resume``: the session it continues),
        held with ``with slot:`` around its creation; else :class:`QuotaExceeded`."""
        if self.limit is None:
            return QuotaSlot()
        active, replaces = await asyncio.to_thread(self._count, tenant, resume)
        if over_quota(active, self._in_flight.get(tenant, 0), self.limit, replaces):
            raise QuotaExceeded(
                f"tenant {tenant!r} holds {active} sessions in region {self.region!r}, its "
                f"quota of {self.limit} concurrent sessions; close one or retry in "
                f"{math.ceil(self.retry_after_s)} s", self.retry_after_s)
        self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1
        return QuotaSlot(self, tenant)

    def _count(self, tenant: str, resume: str | None) -> tuple[int, bool]:
        assert self.store is not None
        active = self.store.count_active(tenant)
        if resume is None or active == 0:
            return active, False
        try:
            record = self.store.get_session(resume, tenant)
        except InputError:  # a malformed id: the renderer refuses it with its own message
            return active, False
        return active, record is not None and record.state == "active"

    def _release(self, tenant: str) -> None:
        left = self._in_flight.get(tenant, 0) - 1
        if left > 0:
            self._in_flight[tenant] = left
        else:
            self._in_flight.pop(tenant, None)

    def close(self) -> None:
        """Release the session store's connections."""
        if self.store is not None:
            self.store.close()
