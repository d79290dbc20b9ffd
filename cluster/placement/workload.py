"""The simulated world: metros, diurnal arrivals, access links, true network paths, churn and
region failures. Everything is drawn up front with numpy from one seed.

Model (docs/placement.md): clients live in 44 metros weighted by users, each with its local
day (a midday and a larger evening peak). A client's access link is fibre, cable/DSL, mobile
or congested; the true RTT to a region is access + 4 ms + great-circle fibre time x a route
inflation drawn per metro and region (1.1-1.4); jitter is the access jitter plus 10 % of the
path RTT. Clients probe every region they can reach (RTT < 300 ms) just before asking, except
5 % that send nothing and 3 % whose probes are stale, who get the server's estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster.placement.model import EARTH_RADIUS_KM, Snapshot

DAY_S = 86_400.0

# name, latitude, longitude, UTC offset (h), relative users
METROS: tuple[tuple[str, float, float, float, float], ...] = (
    ("New York", 40.71, -74.01, -5, 8), ("Toronto", 43.65, -79.38, -5, 3),
    ("Chicago", 41.88, -87.63, -6, 4), ("Dallas", 32.78, -96.80, -6, 3),
    ("Atlanta", 33.75, -84.39, -5, 3), ("Miami", 25.76, -80.19, -5, 2),
    ("Los Angeles", 34.05, -118.24, -8, 6), ("San Francisco", 37.77, -122.42, -8, 4),
    ("Seattle", 47.61, -122.33, -8, 2), ("Mexico City", 19.43, -99.13, -6, 4),
    ("São Paulo", -23.55, -46.63, -3, 5), ("Buenos Aires", -34.60, -58.38, -3, 3),
    ("Bogotá", 4.71, -74.07, -5, 2), ("Santiago", -33.45, -70.67, -4, 2),
    ("Lima", -12.05, -77.04, -5, 2), ("London", 51.51, -0.13, 0, 6),
    ("Paris", 48.86, 2.35, 1, 5), ("Berlin", 52.52, 13.40, 1, 4),
    ("Madrid", 40.42, -3.70, 1, 3), ("Milan", 45.46, 9.19, 1, 3),
    ("Stockholm", 59.33, 18.07, 1, 2), ("Warsaw", 52.23, 21.01, 1, 2),
    ("Istanbul", 41.01, 28.98, 3, 3), ("Lagos", 6.52, 3.38, 1, 2),
    ("Johannesburg", -26.20, 28.05, 2, 2), ("Cairo", 30.04, 31.24, 2, 2),
    ("Nairobi", -1.29, 36.82, 3, 1), ("Dubai", 25.20, 55.27, 4, 2),
    ("Mumbai", 19.08, 72.88, 5.5, 5), ("Delhi", 28.61, 77.21, 5.5, 5),
    ("Bangalore", 12.97, 77.59, 5.5, 4), ("Singapore", 1.35, 103.82, 8, 2),
    ("Jakarta", -6.21, 106.85, 7, 4), ("Manila", 14.60, 120.98, 8, 3),
    ("Bangkok", 13.76, 100.50, 7, 3), ("Hong Kong", 22.32, 114.17, 8, 3),
    ("Taipei", 25.03, 121.57, 8, 2), ("Seoul", 37.57, 126.98, 9, 4),
    ("Tokyo", 35.68, 139.69, 9, 6), ("Osaka", 34.69, 135.50, 9, 3),
    ("Sydney", -33.87, 151.21, 10, 3), ("Melbourne", -37.81, 144.96, 10, 2),
    ("Vancouver", 49.28, -123.12, -8, 2), ("Riyadh", 24.71, 46.68, 3, 2),
)

# access link: share of clients, RTT ms, jitter ms, loss
ACCESS = (("fibre", 0.35, 3.0, 1.0, 0.001), ("cable", 0.35, 10.0, 3.0, 0.003),
          ("mobile", 0.25, 25.0, 8.0, 0.008), ("congested", 0.05, 40.0, 15.0, 0.012))
PROBE_TIMEOUT_MS = 300.0
NO_PROBES, STALE_PROBES = 0.05, 0.03
CHURN, RECONNECT_S, RETRY_S = 0.05, 2.0, 2.0


def diurnal(local_hour: np.ndarray) -> np.ndarray:
    """Relative arrival rate over the local day: a floor, a midday and an evening peak."""
    def bump(center: float, width: float) -> np.ndarray:
        d = np.abs((local_hour - center + 12.0) % 24.0 - 12.0)
        return np.exp(-0.5 * (d / width) ** 2)
    return 0.08 + 0.6 * bump(12.5, 2.5) + 1.0 * bump(20.5, 2.0)


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


@dataclass(frozen=True)
class Workload:
    """Sessions (arrays of length N, sorted by arrival) and region failures."""

    arrival_s: np.ndarray        # float64
    end_s: np.ndarray            # float64: arrival + duration
    drop_s: np.ndarray           # float64: mid-session network drop time, or inf
    metro: np.ndarray            # int
    latitude_deg: np.ndarray     # client location (what GeoIP tells the server)
    longitude_deg: np.ndarray
    rtt_ms: np.ndarray           # (N, R) float32 true RTT per region
    jitter_ms: np.ndarray        # (N, R) float32
    loss: np.ndarray             # (N,) float32
    probe_mode: np.ndarray       # 0 fresh, 1 none, 2 stale
    probe_age_s: np.ndarray      # how long before the request the probes ran
    feasible_mask: np.ndarray    # (N,) int: bit r set when region r truly meets the SLO
    failures: tuple[tuple[int, float, float], ...]  # (region, start_s, end_s)

    @property
    def size(self) -> int:
        """Number of sessions."""
        return len(self.arrival_s)


def make_workload(snap: Snapshot, sessions: int, seed: int, failures: int = 2, *,
                  no_probes: float = NO_PROBES, stale_probes: float = STALE_PROBES) -> Workload:
    """Draw ``sessions`` sessions over one day and ``failures`` region outages;
    ``no_probes`` and ``stale_probes`` are the shares of clients that send no probes and
    probes 2-15 minutes old."""
    rng = np.random.default_rng(seed)
    lat = np.array([m[1] for m in METROS])
    lon = np.array([m[2] for m in METROS])
    offset = np.array([m[3] for m in METROS])
    weight = np.array([m[4] for m in METROS], dtype=float)
    minutes = np.arange(1440) / 60.0
    rate = weight[:, None] * diurnal((minutes[None, :] + offset[:, None]) % 24.0)
    flat = (rate / rate.sum()).ravel()
    pick = rng.choice(flat.size, size=sessions, p=flat)
    metro, minute = np.divmod(pick, 1440)
    arrival = minute * 60.0 + rng.uniform(0.0, 60.0, sessions)
    order = np.argsort(arrival, kind="stable")
    arrival, metro = arrival[order], metro[order]

    duration = np.clip(rng.lognormal(np.log(300.0), 0.8, sessions), 30.0, 3600.0)
    churn = rng.random(sessions) < CHURN
    drop = np.where(churn, arrival + duration * rng.uniform(0.2, 0.8, sessions), np.inf)
    c_lat = np.clip(lat[metro] + rng.normal(0.0, 0.4, sessions), -89.0, 89.0)
    c_lon = (lon[metro] + rng.normal(0.0, 0.4, sessions) + 180.0) % 360.0 - 180.0

    regions = snap.regions
    r_lat = np.array([r.latitude_deg for r in regions])
    r_lon = np.array([r.longitude_deg for r in regions])
    inflation = rng.uniform(1.1, 1.4, (len(METROS), len(regions)))
    dot = np.clip(_unit(c_lat, c_lon) @ _unit(r_lat, r_lon).T, -1.0, 1.0)
    fibre_ms = 2.0 * EARTH_RADIUS_KM * np.arccos(dot) / 200.0
    path_ms = 4.0 + fibre_ms * inflation[metro]
    tier = rng.choice(len(ACCESS), size=sessions, p=[a[1] for a in ACCESS])
    a_rtt, a_jit, a_loss = (np.array([a[k] for a in ACCESS]) for k in (2, 3, 4))
    rtt = a_rtt[tier][:, None] + rng.uniform(0.0, 3.0, sessions)[:, None] + path_ms
    jitter = (a_jit[tier] * rng.uniform(0.8, 1.2, sessions))[:, None] + 0.1 * path_ms
    loss = a_loss[tier] * rng.uniform(0.5, 1.5, sessions)
    slo = snap.slo
    ok = (rtt <= slo.max_rtt_ms) & (jitter <= slo.max_jitter_ms) & (
        loss <= slo.max_loss)[:, None]
    mask = (ok * (1 << np.arange(len(regions)))).sum(axis=1)
    mode = rng.choice(3, size=sessions, p=[1.0 - no_probes - stale_probes, no_probes,
                                            stale_probes])
    age = np.where(mode == 2, rng.uniform(120.0, 900.0, sessions),
                   rng.uniform(0.0, 5.0, sessions))
    outages = []
    for _ in range(failures):
        start = float(rng.uniform(0.0, DAY_S - 7200.0))
        outages.append((int(rng.integers(len(regions))), start,
                        start + float(rng.uniform(1200.0, 5400.0))))
    return Workload(arrival, arrival + duration, drop, metro, c_lat, c_lon,
                    rtt.astype(np.float32), jitter.astype(np.float32), loss.astype(np.float32),
                    mode, age, mask, tuple(sorted(outages, key=lambda o: o[1])))


def peak_concurrency(work: Workload) -> int:
    """The most sessions open at once (ignoring drops and reconnects)."""
    times = np.concatenate([work.arrival_s, work.end_s])
    steps = np.concatenate([np.ones(work.size, dtype=np.int64),
                            -np.ones(work.size, dtype=np.int64)])
    order = np.lexsort((steps, times))  # at equal times, departures first
    return int(np.cumsum(steps[order]).max()) if work.size else 0
