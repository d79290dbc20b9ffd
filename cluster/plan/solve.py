"""The capacity plan's arithmetic: pure functions from (traffic, prices, measured figures) to
node counts per pool and hour, worker-group min/max, costs, headroom and the binding resource.
No I/O here; formulas are documented in docs/planning.md.
"""

from __future__ import annotations

import math

from cluster.plan import figures as fig
from cluster.plan.figures import Figure, Measured
from cluster.plan.inputs import HOURS, GpuOffer, PriceList, RegionPrices, TrafficProfile
from cluster.plan.result import DAYS_PER_MONTH, Plan, Pool, RegionPlan, RendererOption
from models.errors import InputError

__all__ = ["DAYS_PER_MONTH", "Plan", "Pool", "RegionPlan", "RendererOption", "make_plan",
           "plan_region", "renderer_option"]


def _ceil(x: float) -> int:
    return math.ceil(round(x, 9))


# --- the plan -----------------------------------------------------------------------------


def make_plan(traffic: TrafficProfile, prices: PriceList, measured: Measured,
              pricing_source: str = "the price list") -> Plan:
    """Plan every region of ``traffic``; inconsistent input raises InputError."""
    used: dict[str, Figure] = {}
    hourly = traffic.hourly()
    missing = [r for r in hourly if r not in prices.regions]
    if missing:
        raise InputError(f"region {missing[0]!r} has no prices in {pricing_source}; add it "
                         f"under regions: there or remove it from the traffic profile (priced: "
                         f"{', '.join(prices.regions)})")
    plan = Plan(traffic, [], used)
    _check_latency(traffic, measured, used)
    for name, sessions in hourly.items():
        plan.regions.append(plan_region(name, sessions, prices.regions[name], traffic,
                                        measured, used))
    if traffic.stack.llm == "openai":
        plan.notes.append("llm: openai is an external endpoint; its cost is not in this plan")
    return plan


def plan_region(name: str, sessions: tuple[float, ...], prices: RegionPrices,
                traffic: TrafficProfile, measured: Measured,
                used: dict[str, Figure] | None = None) -> RegionPlan:
    """One region's pools for 24 hours of concurrent sessions (pure)."""
    used = {} if used is None else used
    slo, fleet, work = traffic.slo, traffic.fleet, traffic.workload
    offers = _offers(name, prices, traffic)
    options = tuple(renderer_option(g, o, traffic, measured, used) for g, o in offers.items())
    feasible = [o for o in options if o.problem is None]
    if not feasible:
        reasons = "; ".join(f"{o.gpu}: {o.problem}" for o in options)
        raise InputError(f"region {name}: no GPU type meets the SLO ({slo.size_px} px at "
                         f"{slo.fps} fps): {reasons}. Lower slo.size_px or slo.fps, or raise "
                         "slo.max_sessions_per_renderer")
    best = min(feasible, key=lambda o: (o.cost_per_session_hour_usd, -o.sessions_per_node))
    peak = max(sessions)
    floor = fleet.min_nodes

    # Renderer GPUs: sessions / sessions per node, rounded up, plus spares.
    counts = [_ceil(s / best.sessions_per_node) for s in sessions]
    if fleet.renderer_scaling == "fixed":
        counts = [max(counts)] * HOURS
    rnodes = tuple(max(c, floor) + fleet.spare_renderer_nodes for c in counts)
    raw = min(best.limits.values())
    pools = [_pool("renderer", f"{best.gpu} GPU ({offers[best.gpu].instance})",
                   best.price_per_hour_usd, rnodes, raw, "sessions", peak, best.binding)]

    # VP8 encoding runs on the renderer nodes' CPUs (H100/H200 have no NVENC; VP8 has none).
    cores = _encode_cores_per_session(traffic, measured, used)
    usable = offers[best.gpu].vcpus_per_gpu - measured.get("renderer.reserved_cpus").value
    pools.append(_pool("encode", "renderer vCPUs", 0.0, rnodes, usable, "vCPU",
                       peak * cores, "CPU", on="renderer"))

    # CPU pool: VAD, CPU ASR/LLM/TTS, Serve hops, Gateway and Knowledge.
    per_session = _cpu_cores_per_session(traffic, measured, used)
    base = _use(used, measured.get("cpu.pool_base_vcpus")).value
    vcpus = prices.cpu_node_vcpus
    demand = [base + s * per_session for s in sessions]
    cnodes = tuple(max(floor, _ceil(d / (vcpus * slo.target_utilization))) for d in demand)
    pools.append(_pool("cpu", f"{prices.cpu_node_instance} ({vcpus} vCPU)",
                       vcpus * prices.cpu_core_per_hour_usd, cnodes, vcpus, "vCPU",
                       base + peak * per_session, "CPU"))

    if traffic.stack.llm == "vllm":
        pools.append(_llm_pool(name, offers, traffic, measured, used, sessions))
    speech = _speech_pool(offers, traffic, measured, used, sessions)
    if speech is not None:
        pools.append(speech)

    head = _use(used, measured.get("head.vcpus")).value
    pools.append(_pool("head", f"Ray head ({head:g} vCPU)", head * prices.cpu_core_per_hour_usd,
                       (1,) * HOURS, 1, "head", 1, "fixed"))

    gb_per_session_hour = work.stream_mbps * 3600 / 8000
    egress = sum(sessions) * gb_per_session_hour * prices.egress_per_gb_usd
    gbps = peak * work.stream_mbps / 1000
    pools.append(Pool("network", "internet egress", 0.0, (0,) * HOURS, 0.0, "Gbit/s", gbps,
                      0.0, f"egress {work.stream_mbps:g} Mbit/s", egress))
    return RegionPlan(name, prices, tuple(sessions), tuple(pools), best, options, egress)


def renderer_option(gpu: str, offer: GpuOffer, traffic: TrafficProfile, measured: Measured,
                    used: dict[str, Figure]) -> RendererOption:
    """How many sessions one ``gpu`` node holds, what binds, and what it costs."""
    slo, fleet, work = traffic.slo, traffic.fleet, traffic.workload
    price = _price(offer, fleet.spot_fraction, gpu)
    frame_ms = 1000 / slo.fps
    vp8 = _use(used, fig.vp8_ms_per_frame(measured, slo.size_px))
    render = _use(used, fig.render_sessions(measured, gpu, slo.size_px, slo.fps))
    usable = offer.vcpus_per_gpu - _use(used, measured.get("renderer.reserved_cpus")).value
    limits = {
        "GPU render": render.value,
        "encode CPU": max(0.0, usable) / _encode_cores_per_session(traffic, measured, used),
        "network": offer.network_gbps_per_gpu * 1000 / work.stream_mbps,
    }
    if gpu in measured.sessions_at_slo:
        limits["load test"] = _use(used, measured.sessions_at_slo[gpu]).value
    binding = min(limits, key=lambda k: limits[k])
    per_node = math.floor(round(limits[binding] * slo.target_utilization, 9))
    if slo.max_sessions_per_renderer is not None and slo.max_sessions_per_renderer < per_node:
        per_node, binding = slo.max_sessions_per_renderer, "session cap (slo)"
    problem = None
    single = fig.single_frame_ms(measured, gpu, slo.size_px)
    if vp8.value > frame_ms:
        problem = (f"VP8 encodes a {slo.size_px} px frame in {vp8.value:g} ms > the "
                   f"{frame_ms:.1f} ms frame time")
    elif single is not None and _use(used, single).value > frame_ms:
        problem = f"one frame renders in {single.value:g} ms > the {frame_ms:.1f} ms frame time"
    elif per_node < 1:
        problem = f"fewer than one session per node ({binding} binds)"
    return RendererOption(gpu, price, limits, max(per_node, 0), binding, problem)


# --- pools --------------------------------------------------------------------------------


def _pool(name: str, resource: str, price: float, nodes: tuple[int, ...], capacity: float,
          unit: str, demand: float, binding: str, on: str | None = None) -> Pool:
    peak_nodes = max(nodes)
    headroom = 1 - demand / (peak_nodes * capacity) if peak_nodes and capacity else 0.0
    cost = 0.0 if on else sum(nodes) * price
    return Pool(name, resource, price, nodes, capacity, unit, demand, headroom, binding, cost,
                on)


def _llm_pool(region: str, offers: dict[str, GpuOffer], traffic: TrafficProfile,
              measured: Measured, used: dict[str, Figure],
              sessions: tuple[float, ...]) -> Pool:
    slo, work, fleet = traffic.slo, traffic.workload, traffic.fleet
    tokens_per_turn = work.reply_tokens + work.prompt_tokens * work.prefill_weight
    per_session = work.turns_per_minute / 60 * tokens_per_turn
    choices = []
    for gpu, offer in offers.items():
        stream = fig.per_gpu(measured, "llm.vllm.stream_tokens_per_s", gpu)
        if stream.value >= slo.llm_stream_tokens_per_s:
            cap = fig.per_gpu(measured, "llm.vllm.tokens_per_s_per_gpu", gpu)
            choices.append((_price(offer, fleet.spot_fraction, gpu) / cap.value, gpu, cap,
                            stream))
    if not choices:
        raise InputError(f"region {region}: no GPU type decodes {slo.llm_stream_tokens_per_s:g} "
                         "tokens/s per reply (slo.llm_stream_tokens_per_s); lower it or price "
                         "a faster GPU type")
    _, gpu, cap, stream = min(choices)
    _use(used, cap)
    _use(used, stream)
    nodes = tuple(max(fleet.min_nodes, _ceil(s * per_session / (cap.value
                                                                  * slo.target_utilization)))
                  for s in sessions)
    return _pool("llm", f"{gpu} GPU ({offers[gpu].instance})",
                 _price(offers[gpu], fleet.spot_fraction, gpu), nodes, cap.value, "tokens/s",
                 max(sessions) * per_session, "tokens/s")


def _speech_pool(offers: dict[str, GpuOffer], traffic: TrafficProfile, measured: Measured,
                 used: dict[str, Figure], sessions: tuple[float, ...]) -> Pool | None:
    stack, work, slo, fleet = traffic.stack, traffic.workload, traffic.slo, traffic.fleet
    turns_per_s = work.turns_per_minute / 60
    parts = []  # (figure name, real-time streams per session)
    if stack.asr == "nemo":
        parts.append(("asr.nemo.streams_per_gpu", turns_per_s * work.user_speech_s_per_turn))
    if stack.tts == "nemo":
        parts.append(("tts.nemo.streams_per_gpu", turns_per_s * work.reply_audio_s_per_turn))
    if not parts:
        return None

    def share(gpu: str) -> float:  # GPUs one session needs
        return sum(streams / fig.per_gpu(measured, n, gpu).value for n, streams in parts)

    gpu = min(offers, key=lambda g: _price(offers[g], fleet.spot_fraction, g) * share(g))
    for n, _ in parts:
        _use(used, fig.per_gpu(measured, n, gpu))
    per_session = share(gpu)
    nodes = tuple(max(fleet.min_nodes, _ceil(s * per_session / slo.target_utilization))
                  for s in sessions)
    return _pool("speech", f"{gpu} GPU ({offers[gpu].instance})",
                 _price(offers[gpu], fleet.spot_fraction, gpu), nodes, 1 / per_session,
                 "sessions", max(sessions), "GPU streams")


def _encode_cores_per_session(traffic: TrafficProfile, measured: Measured,
                              used: dict[str, Figure]) -> float:
    """VP8 ms per frame x fps / 1000, plus the session's other work on the renderer node."""
    vp8 = _use(used, fig.vp8_ms_per_frame(measured, traffic.slo.size_px)).value
    overhead = _use(used, measured.get("renderer.session_overhead_cores")).value
    return vp8 * traffic.slo.fps / 1000 + overhead


def _cpu_cores_per_session(traffic: TrafficProfile, measured: Measured,
                           used: dict[str, Figure]) -> float:
    """Cores one session keeps busy on CPU nodes, averaged over its conversation."""
    stack, work = traffic.stack, traffic.workload
    turns_per_s = work.turns_per_minute / 60

    def get(name: str) -> float:
        return _use(used, measured.get(name)).value

    core_s_per_turn = get("serve.core_s_per_turn")
    if stack.asr != "nemo":
        core_s_per_turn += get(f"asr.{stack.asr}.core_s_per_turn")
    if stack.llm in ("kb", "llamacpp"):
        core_s_per_turn += get(f"llm.{stack.llm}.core_s_per_turn")
    if stack.tts != "nemo":
        core_s_per_turn += get(f"tts.{stack.tts}.rtf") * work.reply_audio_s_per_turn
    return get("vad.cores_per_session") + core_s_per_turn * turns_per_s


# --- checks and helpers -------------------------------------------------------------------


def _offers(region: str, prices: RegionPrices, traffic: TrafficProfile) -> dict[str, GpuOffer]:
    allowed = traffic.fleet.gpu_types
    offers = {g: o for g, o in prices.gpus.items() if allowed is None or g in allowed}
    if not offers:
        priced = ", ".join(prices.gpus) or "none"
        raise InputError(f"region {region}: prices none of the GPU types fleet.gpu_types allows "
                         f"({', '.join(allowed or ())}); it prices {priced}; widen "
                         "fleet.gpu_types or add prices")
    return offers


def _price(offer: GpuOffer, spot_fraction: float, gpu: str) -> float:
    if spot_fraction == 0:
        return offer.on_demand_per_hour_usd
    if offer.spot_per_hour_usd is None:
        raise InputError(f"{gpu} ({offer.instance}) has no spot price; set fleet.spot_fraction "
                         "to 0 or add spot_per_hour_usd to the price list")
    return ((1 - spot_fraction) * offer.on_demand_per_hour_usd
            + spot_fraction * offer.spot_per_hour_usd)


def _check_latency(traffic: TrafficProfile, measured: Measured, used: dict[str, Figure]) -> None:
    target = traffic.slo.voice_to_first_audio_p95_ms
    if target is None:
        return
    name = "latency.voice_to_first_audio_p95_ms"
    if name not in measured.figures:
        raise InputError("slo.voice_to_first_audio_p95_ms is set but no e2e or pipeline "
                         "benchmark is among the --measured files; add one or unset the SLO")
    got = _use(used, measured.figures[name])
    if got.value > target:
        raise InputError(f"slo.voice_to_first_audio_p95_ms is {target:g} ms but the stack "
                         f"measured {got.value:g} ms ({got.source}); raise the SLO or measure a "
                         "faster stack with `avatarctl bench e2e --json`")


def _use(used: dict[str, Figure], figure: Figure) -> Figure:
    used.setdefault(figure.name, figure)
    return figure
