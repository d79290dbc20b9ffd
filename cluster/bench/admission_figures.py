"""The admission benchmark's pure parts: its plan, figures and verdict, and the cluster's
configuration for it (:mod:`cluster.bench.admission` runs it)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from configs.schema import AppConfig
from deployments.timing import percentiles
from models.errors import InputError

TENANT_A = "maple-annex"
"""Tenant A's persona: the flooding tenant (configs/personas/maple-annex)."""
TARGETS = {"refusal_p95_ms": 100.0, "fairness_increase_pct": 10.0}
SLO_FIGURE = "text_to_first_audio_ms.p95"
OVERLOAD_ARMS = ("quiet", "excess")
FAIRNESS_ARMS = ("a_idle", "a_at_quota", "a_flood")


@dataclass(frozen=True, slots=True)
class Plan:
    """How many sessions each part uses for a renderer of ``capacity`` sessions."""

    capacity: int
    quota: int
    """max_sessions_per_tenant: above half the capacity, so the overload's sessions (half of
    each tenant) stay below it and its excess meets a full renderer (503), not the quota."""
    b_sessions: int
    """Tenant B's sessions in the fairness part: what A's quota leaves of the capacity."""
    excess: int
    """Would-be sessions beyond capacity in the overload part (1.5x capacity offered)."""
    flood: int
    """Sessions tenant A asks for in the fairness part: 10x its quota."""


def plan_for(capacity: int) -> Plan:
    """The plan for ``capacity`` sessions (4 to 16)."""
    if not 4 <= capacity <= 16:
        raise InputError(f"--sessions is {capacity}; pick 4 to 16 (the renderer's capacity: "
                         "two tenants below a quota above half of it, and room for B)")
    quota = math.ceil(capacity / 2) + 1
    return Plan(capacity, quota, capacity - quota, math.ceil(capacity / 2), 10 * quota)


def latency_summary(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"p50", "p95", "max", "n"}`` in ms of the values present (None when there are none)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    out: dict[str, Any] = percentiles(present, (50, 95), 1)
    out["max"] = round(max(present), 1) if present else None
    return out


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` to 3 digits; None when either is missing or the
    denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 3)


def increase_pct(loaded: float | None, baseline: float | None) -> float | None:
    """How much ``loaded`` exceeds ``baseline``, in % of it (negative when below)."""
    r = ratio(loaded, baseline)
    return None if r is None else round((r - 1.0) * 100.0, 1)


def arm_order(round_index: int, arms: Sequence[str]) -> list[str]:
    """The arms of one round, rotated by one place each round."""
    k = round_index % len(arms)
    return list(arms[k:]) + list(arms[:k])


def check_targets(report: dict[str, Any]) -> dict[str, bool]:
    """Each target met? (a figure that could not be measured is not met)."""
    over, fair = report["overload"], report["fairness"]

    def at_most(value: float | None, bound: float | None) -> bool:
        return value is not None and bound is not None and value <= bound

    slo = over["slo_text_to_first_audio_p95_ms"]
    return {
        "overload_refusal_p95_ms": at_most(over["refusal_ms"]["p95"], TARGETS["refusal_p95_ms"]),
        "quota_refusal_p95_ms": at_most(fair["refusal_ms"]["p95"], TARGETS["refusal_p95_ms"]),
        "admitted_keep_slo": at_most(
            over["admitted_text_to_first_audio_ms"]["excess"]["p95"], slo),
        "burst_admits_quota": fair["burst_admitted"] == fair["quota"],
        "fairness_increase_pct": at_most(fair["b_p95_increase_pct"],
                                         TARGETS["fairness_increase_pct"]),
    }


def _by_arm(rounds: list[dict[str, Any]], arms: Sequence[str], key: str = "first_audio_ms"
            ) -> dict[str, dict[str, Any]]:
    return {arm: percentiles([v for r in rounds if r["arm"] == arm for v in r[key]], (50, 95), 1)
            for arm in arms}


def _refusals(records: list[dict[str, Any]]) -> dict[str, Any]:
    refused = [r for r in records if r["status"] != 201]
    return {"refusal_ms": latency_summary([r["ms"] for r in refused]),
            "refusal_status": dict(Counter(str(r["status"]) for r in refused)),
            "refusals_with_retry_after": sum(1 for r in refused
                                             if r["retry_after_s"] is not None),
            "admitted_while_full": sum(1 for r in records if r["status"] == 201)}


def build_report(raw: dict[str, Any], plan: Plan, setup: dict[str, Any],
                 slo_ms: float | None) -> dict[str, Any]:
    """The benchmark's JSON from its raw records (see :func:`run_admission_bench`)."""
    over, fair = raw["overload"], raw["fairness"]
    t2a = _by_arm(over["rounds"], OVERLOAD_ARMS)
    overload = {
        "capacity_sessions": plan.capacity, "offered_sessions": plan.capacity + plan.excess,
        **_refusals(over["attempts"]),
        "admitted_text_to_first_audio_ms": t2a,
        "admitted_server_first_audio_ms": _by_arm(over["rounds"], OVERLOAD_ARMS,
                                                  "server_first_audio_ms"),
        "admitted_p95_ratio": ratio(t2a["excess"]["p95"], t2a["quiet"]["p95"]),
        "slo_text_to_first_audio_p95_ms": slo_ms,
        "rounds": sum(1 for r in over["rounds"] if r["arm"] == "excess"),
    }
    b = _by_arm(fair["rounds"], FAIRNESS_ARMS)
    burst = _refusals(fair["burst"])
    fairness = {
        "quota": plan.quota, "b_sessions": plan.b_sessions, "a_attempted": plan.flood,
        "burst_admitted": burst["admitted_while_full"], "burst_refusal_ms": burst["refusal_ms"],
        **_refusals(fair["attempts"]),
        "a_turns": fair["a_turns"],
        "b_text_to_first_audio_ms": b,
        "b_p95_increase_pct": increase_pct(b["a_flood"]["p95"], b["a_at_quota"]["p95"]),
        "b_p95_increase_vs_idle_pct": increase_pct(b["a_flood"]["p95"], b["a_idle"]["p95"]),
        "b_p50_increase_pct": increase_pct(b["a_flood"]["p50"], b["a_at_quota"]["p50"]),
        "rounds": sum(1 for r in fair["rounds"] if r["arm"] == "a_flood"),
    }
    report: dict[str, Any] = {"overload": overload, "fairness": fairness,
                              "startup_s": round(raw["startup_s"], 1),
                              "truncated": raw.get("truncated", False),
                              "targets": {**TARGETS, "admitted_keep_slo": slo_ms}}
    report["met"] = check_targets(report)
    report["setup"] = {**setup, "plan": asdict(plan)}
    report["round_log"] = [{"part": part, **r} for part in ("overload", "fairness")
                           for r in raw[part]["rounds"]]
    return report


# --- the cluster's configuration ----------------------------------------------------------------


def bench_config(config: AppConfig, plan: Plan) -> AppConfig:
    """``config`` with tenant A's persona and knowledge base beside B's, one renderer of
    ``plan.capacity`` sessions, the quota, and rate limits out of the way (every client of
    the run comes from 127.0.0.1)."""
    from configs.loader import load_persona

    b = load_persona(config.persona)
    a = load_persona(TENANT_A)
    if a.tenant == b.tenant:
        raise InputError(f"the profile's persona {b.name!r} is tenant {b.tenant!r}, the same "
                         f"as {TENANT_A!r}; use a profile whose persona is another tenant")
    data = config.model_dump()
    home = next((kb for kb in data["knowledge_bases"] if kb["name"] == b.knowledge_base), None)
    if home is None:
        raise InputError(f"persona {b.name!r} uses knowledge base {b.knowledge_base!r}, which "
                         "is not under knowledge_bases in the profile")
    data["personas"] = [p for p in data["personas"] if p != TENANT_A] + [TENANT_A]
    data["knowledge_bases"] = [kb for kb in data["knowledge_bases"]
                               if kb["name"] != a.knowledge_base]
    data["knowledge_bases"].append({"name": a.knowledge_base, "tenant": a.tenant,
                                    "path": home["path"], "description": "tenant A's copy"})
    renderer = data["deployments"]["renderer"]
    renderer.update(num_replicas=1, sessions_per_replica=plan.capacity,
                    max_ongoing_requests=max(renderer["max_ongoing_requests"],
                                             4 * plan.capacity + 8))
    data["cluster"]["admission"] = {"sessions_per_minute_per_ip": 1e6,
                                    "sessions_per_minute_per_tenant": 1e6, "burst": 100_000,
                                    "max_sessions_per_tenant": plan.quota}
    return AppConfig.model_validate(data)


def slo_bound_ms() -> float | None:
    """The text-to-first-audio p95 bound of the default SLO (configs/slo/default.yaml)."""
    from load_tests.slo import load_slo

    return next((o.bound for o in load_slo().objectives if o.figure == SLO_FIGURE), None)
