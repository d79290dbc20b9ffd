"""Session tokens, API keys and admission limits: what is accepted and, above all, what is not.

More than a thousand generated bad tokens (expired, not yet valid, forged, ``alg: none``,
algorithm swaps, another session, tenant, region, audience or issuer, missing claims,
tampered or truncated, garbage) are all refused; the good token is accepted.
"""

from __future__ import annotations

import base64
import json
import random
import time

import jwt
import pytest

from configs.schema import AdmissionConfig
from deployments.auth import AUDIENCE, ISSUER, Admission, ApiKeys, SessionTokens
from models.errors import AuthError, ConfigError, RateLimited

pytestmark = pytest.mark.unit

KEY = b"k" * 32
SID = "r1.0123456789abcdef0123456789abcdef"


def tokens(clock=time.time) -> SessionTokens:
    return SessionTokens(KEY, "eu-west", 600, clock=clock)


def claims(**changes: object) -> dict:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": SID, "tenant": "maple", "region": "eu-west",
            "iat": now, "nbf": now, "exp": now + 600, "jti": "x"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, payload: dict, signature: str = "") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()),
                     signature])


def bad_tokens(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """``n`` (kind, token) pairs, none of which may be accepted for SID in eu-west."""
    rng = random.Random(seed)
    good = tokens().issue(SID, "maple")
    now = int(time.time())
    makers = {
        "expired": lambda: tokens(lambda: now - 600 - rng.randint(6, 10**6)).issue(SID, "maple"),
        "not yet valid": lambda: tokens(lambda: now + rng.randint(60, 10**6)).issue(SID, "maple"),
        "forged key": lambda: jwt.encode(claims(), rng.randbytes(32), algorithm="HS256"),
        "alg none": lambda: unsigned({"alg": rng.choice(["none", "None", "NONE"]),
                                      "typ": "JWT"}, claims()),
        "alg none signed": lambda: unsigned({"alg": "none"}, claims(), good.split(".")[2]),
        "HS512 right key": lambda: jwt.encode(claims(), KEY * 2, algorithm="HS512"),
        "RS256 header": lambda: unsigned({"alg": "RS256", "typ": "JWT"}, claims(),
                                         good.split(".")[2]),
        "other session": lambda: tokens().issue(f"r1.{rng.randbytes(16).hex()}", "maple"),
        "other region": lambda: SessionTokens(KEY, rng.choice(["us-east", "ap-south", ""]) or
                                              "x", 600).issue(SID, "maple"),
        "other audience": lambda: jwt.encode(claims(aud=rng.choice(["admin", "", "avatar"])),
                                             KEY, algorithm="HS256"),
        "other issuer": lambda: jwt.encode(claims(iss="someone-else"), KEY, algorithm="HS256"),
        "no exp": lambda: jwt.encode(claims(exp=None), KEY, algorithm="HS256"),
        "no sub": lambda: jwt.encode(claims(sub=None), KEY, algorithm="HS256"),
        "no nbf": lambda: jwt.encode(claims(nbf=None), KEY, algorithm="HS256"),
        "non-string tenant": lambda: jwt.encode(claims(tenant=rng.choice([1, None, ["m"]])),
                                                KEY, algorithm="HS256"),
        "tampered payload": lambda: ".".join([
            good.split(".")[0],
            b64(json.dumps(claims(tenant=rng.choice(["acme", "root", "maple2"]))).encode()),
            good.split(".")[2]]),
        "flipped signature": lambda: good[:-4] + "".join(
            rng.choice("ABCDEFGHabcdefgh0123456789-_") for _ in range(4)),
        "truncated": lambda: good[: rng.randint(0, len(good) - 1)],
        "garbage": lambda: "".join(rng.choice("abcXYZ0123456789.-_=+/ ")
                                   for _ in range(rng.randint(1, 300))),
        "oversized": lambda: good + "A" * rng.randint(2048, 5000),
    }
    kinds = list(makers)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        token = makers[kind]()
        if token != good:  # a truncation of length len(good) cannot happen; belt and braces
            out.append((kind, token))
    return out


def test_the_issued_token_is_accepted_for_its_session_only() -> None:
    t = tokens()
    got = t.verify(t.issue(SID, "maple"), SID)
    assert (got.session_id, got.tenant, got.region) == (SID, "maple", "eu-west")
    assert got.expires_at_s == pytest.approx(time.time() + 600, abs=5)


def test_more_than_a_thousand_bad_tokens_are_all_refused() -> None:
    t = tokens()
    cases = bad_tokens(1200)
    assert len(cases) >= 1000 and len({k for k, _ in cases}) == 20
    accepted = []
    for kind, token in cases:
        try:
            t.verify(token, SID)
            accepted.append(kind)
        except AuthError as exc:
            assert exc.status in (401, 403) and exc.message
    assert accepted == []


def test_refusals_say_what_is_wrong() -> None:
    t = tokens()
    now = time.time()
    with pytest.raises(AuthError, match="needs its token"):
        t.verify(None, SID)
    with pytest.raises(AuthError, match="expired"):
        t.verify(tokens(lambda: now - 7200).issue(SID, "maple"), SID)
    with pytest.raises(AuthError, match="not valid yet"):
        t.verify(tokens(lambda: now + 7200).issue(SID, "maple"), SID)
    with pytest.raises(AuthError, match="another session") as other:
        t.verify(t.issue("r1.other", "maple"), SID)
    assert other.value.status == 403
    with pytest.raises(AuthError, match="region 'us-east'"):
        t.verify(SessionTokens(KEY, "us-east", 600).issue(SID, "maple"), SID)


def test_a_resume_accepts_an_expired_token_of_that_session_within_the_grace() -> None:
    t = tokens()
    old = tokens(lambda: time.time() - 7200).issue(SID, "maple")
    assert t.verify_resume(old, SID).session_id == SID
    with pytest.raises(AuthError, match="expired"):
        t.verify_resume(tokens(lambda: time.time() - 3 * 86400).issue(SID, "maple"), SID)
    with pytest.raises(AuthError):
        t.verify_resume(jwt.encode(claims(), b"x" * 32, algorithm="HS256"), SID)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        SessionTokens(b"short", "r", 600)


def test_api_keys_are_checked_by_digest_role_and_tenant() -> None:
    keys = ApiKeys.from_entries([
        {"tenant": "maple", "roles": ["client", "ingest"], "sha256": ApiKeys.digest("k-maple")},
        {"tenant": "acme", "roles": ["admin"], "sha256": ApiKeys.digest("k-acme")},
    ])
    assert keys.check("k-maple", "ingest", "maple").tenant == "maple"
    for key, role, tenant, status, words in [
        (None, "client", None, 401, "X-API-Key"),
        ("nope", "client", None, 401, "unknown"),
        ("k-maple", "admin", None, 403, "admin role"),
        ("k-maple", "client", "acme", 403, "another tenant"),
        ("k-acme", "ingest", "acme", 403, "ingest role"),
    ]:
        with pytest.raises(AuthError, match=words) as exc:
            keys.check(key, role, tenant)
        assert exc.value.status == status
    with pytest.raises(AuthError, match="no API keys"):
        ApiKeys({}).check("anything", "client")


@pytest.mark.parametrize("entry, words", [
    ({"tenant": "t", "roles": ["client"]}, "tenant, roles, sha256"),
    ({"tenant": "t", "roles": ["root"], "sha256": "a" * 64}, "roles"),
    ({"tenant": "t", "roles": ["client"], "sha256": "plaintext-key"}, "64-hex"),
])
def test_a_malformed_keys_file_names_the_entry_and_the_fix(entry: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ApiKeys.from_entries([entry], "keys.yaml")


def test_new_sessions_are_limited_per_address_and_per_tenant() -> None:
    now = [0.0]
    admission = Admission(AdmissionConfig(sessions_per_minute_per_ip=6, burst=2,
                                          sessions_per_minute_per_tenant=60),
                          clock=lambda: now[0])
    admission.admit("10.0.0.1", "maple")
    admission.admit("10.0.0.1", "maple")
    with pytest.raises(RateLimited, match=r"10\.0\.0\.1") as limited:
        admission.admit("10.0.0.1", "maple")
    assert limited.value.retry_after_s == pytest.approx(10.0)  # 6/min: one every 10 s
    admission.admit("10.0.0.2", "maple")  # another address is not held back
    now[0] += 10.0
    admission.admit("10.0.0.1", "maple")
    for i in range(30):  # the tenant's own bucket: 60/min with a burst of 10
        try:
            admission.admit(f"10.1.0.{i}", "maple")
        except RateLimited as exc:
            assert "tenant 'maple'" in exc.message
            break
    else:
        pytest.fail("the tenant limit never applied")
    admission.admit("10.2.0.1", "acme")  # other tenants go on
