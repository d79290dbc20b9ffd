"""The global entry: one URL for every client, which picks the region and opens the session there.

* ``POST /v1/sessions`` with the client's probe results (``measurements``: region -> RTT,
  jitter, loss, when) runs :func:`~cluster.placement.decide.decide` over the latest region
  reports, then creates the session on the chosen region's gateway. A region that refuses
  (503 full, or unreachable) is avoided and the next decision tried, up to
  :data:`MAX_TRIES`. The reply carries the region, the session id and token, the signalling
  URL (the region's ``/offer``) and the decision's explanation and ranking.
* ``POST /v1/regions/{name}/report``: each region's load (active sessions, capacity, draining)
  every few seconds (``X-Region-Key`` when a key is configured). A region that stops reporting
  is used only as a last resort after ``late_report_s`` and drained after ``report_timeout_s``.
* ``GET /v1/regions``: what the entry knows.

Run it with ``avatarctl place serve --regions configs/regions/world.yaml``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from cluster.placement.decide import decide
from cluster.placement.model import ClientMeasurement, Decision, Probe, Snapshot
from cluster.placement.regions import PlacementConfig
from models.errors import ClusterFull, InputError

MAX_TRIES = 3
CREATE_TIMEOUT_S = 10.0


class MeasurementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rtt_ms: float = Field(ge=0, le=10_000)
    jitter_ms: float = Field(ge=0, le=10_000)
    loss: float = Field(0.0, ge=0, le=1)
    measured_at_s: float = Field(description="UNIX seconds when the probe ran.")


class PlaceRequest(BaseModel):
    """A new session, placed by the client's measurements."""

    model_config = ConfigDict(extra="forbid")
    persona: str | None = Field(None, max_length=64)
    video: bool = True
    resume: str | None = Field(None, max_length=128)
    previous_region: str | None = Field(None, max_length=64, description="Where a "
                                        "reconnecting session was (stickiness).")
    measurements: dict[str, MeasurementIn] = Field(default_factory=dict, max_length=64)
    latitude_deg: float | None = Field(None, ge=-90, le=90)
    longitude_deg: float | None = Field(None, ge=-180, le=180)


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active_sessions: int = Field(ge=0)
    capacity_sessions: int | None = Field(None, ge=0)
    draining: bool = False


@dataclass
class _Report:
    active: int
    capacity: int
    at_s: float
    draining: bool


class PlacementService:
    """Region reports plus decisions; placements since a region's last report count as load."""

    def __init__(self, config: PlacementConfig, *, clock: Callable[[], float] = time.time
                 ) -> None:
        self.config = config
        self.clock = clock
        self._base = config.snapshot()
        self._reports = {r.name: _Report(0, r.renderer_capacity_sessions, 0.0, False)
                         for r in config.regions}
        self._pending = {r.name: 0 for r in config.regions}

    def report(self, region: str, active_sessions: int, capacity_sessions: int | None = None,
               draining: bool = False) -> None:
        known = self._reports.get(region)
        if known is None:
            raise InputError(f"unknown region {region!r}; the regions file has "
                             f"{', '.join(self._reports)}")
        capacity = known.capacity if capacity_sessions is None else capacity_sessions
        self._reports[region] = _Report(active_sessions, capacity, self.clock(), draining)
        self._pending[region] = 0

    def snapshot(self) -> Snapshot:
        names = self._base.names
        snap = self._base
        capacities = [self._reports[n].capacity for n in names]
        if list(capacities) != list(snap.capacity):
            regions = tuple(
                type(r)(r.name, r.gateway_url, r.gpu_type, r.price_per_gpu_hour_usd,
                        r.egress_price_per_gb_usd, r.sessions_per_gpu, c, 0, 0.0,
                        r.latitude_deg, r.longitude_deg, False)
                for r, c in zip(snap.regions, capacities, strict=True))
            snap = Snapshot(regions, snap.slo, snap.cost, snap.view)
        return snap.with_reports([self._reports[n].active for n in names],
                                 [self._reports[n].at_s for n in names],
                                 [self._reports[n].draining for n in names])

    def place(self, measurement: ClientMeasurement, previous_region: str | None = None,
              avoid: tuple[str, ...] = ()) -> Decision:
        snap = self.snapshot()
        pending = [self._pending[n] for n in snap.names]
        decision = decide(snap, measurement, now_s=self.clock(), previous_region=previous_region,
                          avoid=avoid, pending=pending)
        self._pending[decision.region] += 1
        return decision

    def status(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [{"region": name, "active_sessions": r.active, "capacity_sessions": r.capacity,
                 "draining": r.draining,
                 "report_age_s": None if not r.at_s else round(now - r.at_s, 1),
                 "placed_since_report": self._pending[name]}
                for name, r in self._reports.items()]


def measurement_of(body: PlaceRequest) -> ClientMeasurement:
    probes = {name: Probe(m.rtt_ms, m.jitter_ms, m.loss, m.measured_at_s)
              for name, m in body.measurements.items()}
    return ClientMeasurement(probes, body.latitude_deg, body.longitude_deg)


def entry_app(service: PlacementService, *, report_key: str | None = None,
              http: Any = None) -> Any:
    """The entry's FastAPI app. ``http``: an ``httpx.AsyncClient`` for the regions' gateways
    (made here when None)."""
    app = FastAPI(title="avatar-cluster global entry",
                  description="Places each session in the region that meets its latency SLO "
                  "at the lowest cost per avatar-hour.")
    client = http or httpx.AsyncClient(timeout=CREATE_TIMEOUT_S)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> Any:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: "
                 f"{e.get('msg', 'invalid')}" for e in exc.errors()[:5]]
        return error(422, "invalid request: " + "; ".join(parts))

    @app.post("/v1/sessions", status_code=201, summary="Place and start a session",
              response_model=None)
    async def create(body: PlaceRequest, request: Request) -> Any:
        forward = {k: v for k, v in (("x-api-key", request.headers.get("x-api-key")),
                                     ("authorization", request.headers.get("authorization")))
                   if v}
        avoid: list[str] = []
        refusals: list[str] = []
        for _ in range(MAX_TRIES):
            try:
                decision = service.place(measurement_of(body), body.previous_region,
                                         tuple(avoid))
            except InputError as exc:
                return error(400, exc.message)
            except ClusterFull as exc:
                return error(503, exc.message + "".join(f"; {r}" for r in refusals),
                             {"Retry-After": "5"})
            url = decision.gateway_url.rstrip("/")
            try:
                reply = await client.post(f"{url}/v1/sessions", headers=forward, json={
                    "persona": body.persona, "video": body.video, "resume": body.resume})
            except httpx.HTTPError as exc:
                refusals.append(f"{decision.region} unreachable ({type(exc).__name__})")
                avoid.append(decision.region)
                continue
            if reply.status_code in (502, 503, 504):
                refusals.append(f"{decision.region} answered {reply.status_code}")
                avoid.append(decision.region)
                continue
            if reply.status_code != 201:  # the client's own mistake: pass it on as it is
                return JSONResponse(reply.json(), status_code=reply.status_code)
            session = reply.json()
            sid = session["session_id"]
            return {**session, "region": decision.region, "gateway_url": url,
                    "offer_url": f"{url}/v1/sessions/{sid}/offer",
                    "events_url": f"{url}{session.get('events_url', '')}",
                    "frame_url": f"{url}{session.get('frame_url', '')}",
                    "placement": decision.to_dict(), "refused_by": refusals}
        return error(503, "no region could take the session: " + "; ".join(refusals),
                     {"Retry-After": "5"})

    @app.post("/v1/regions/{name}/report", status_code=204, summary="A region's load",
              response_model=None)
    async def report(name: str, body: ReportIn, request: Request) -> Any:
        if report_key is not None and not hmac.compare_digest(
                request.headers.get("x-region-key", ""), report_key):
            return error(401, "region reports need the X-Region-Key header")
        try:
            service.report(name, body.active_sessions, body.capacity_sessions, body.draining)
        except InputError as exc:
            return error(404, exc.message)
        return Response(status_code=204)

    @app.get("/v1/regions", summary="Regions and their last reports")
    async def regions() -> list[dict[str, Any]]:
        return service.status()

    return app
