"""Load profiles: how many simulated users should be in a session at each moment of a run.

Pure functions of time; the runner (:mod:`load_tests.runner`) asks :meth:`LoadProfile.users_at`
every tick and starts or hangs up users to match. Every profile is 0 from ``duration_s`` on,
so a run ends by itself.

* ``constant``: ``users`` from the start.
* ``ramp``: from 1 up to ``users`` in equal increments over the first half of the run, then
  held (the second half shows the full load).
* ``step``: up to four equal plateaus (``users / steps``, ``2 users / steps``, ...), each
  held for an equal share of the run.
* ``spike``: a quarter of ``users`` (at least 1), with all ``users`` in the middle fifth of
  the run (from 40 % to 60 %).
* ``soak``: ``users`` held for the whole run after a short ramp (a tenth of the run, at most
  60 s); the server's memory growth is measured from the end of that ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.errors import InputError

PROFILES = ("constant", "ramp", "step", "spike", "soak")
MAX_USERS = 64
"""Concurrent simulated users one harness process drives at most."""
MIN_DURATION_S = 5.0
MAX_DURATION_S = 6 * 3600.0
RAMP_FRACTION = 0.5
MAX_STEPS = 4
SPIKE_WINDOW = (0.4, 0.6)
SOAK_RAMP_FRACTION = 0.1
SOAK_RAMP_MAX_S = 60.0


@dataclass(frozen=True)
class LoadProfile:
    """Target concurrent users over a run of ``duration_s`` seconds, peaking at ``users``."""

    name: str
    users: int
    duration_s: float

    def users_at(self, t_s: float) -> int:
        """Users that should be in a session ``t_s`` seconds after the run began."""
        if t_s < 0 or t_s >= self.duration_s:
            return 0
        n, d = self.users, self.duration_s
        if self.name == "constant":
            return n
        if self.name == "ramp":
            return _ramp(1, n, t_s, RAMP_FRACTION * d)
        if self.name == "step":
            steps = min(n, MAX_STEPS)
            k = min(steps, 1 + int(t_s * steps / d))
            return max(1, round(n * k / steps))
        if self.name == "spike":
            lo, hi = SPIKE_WINDOW
            return n if lo * d <= t_s < hi * d else max(1, n // 4)
        return _ramp(1, n, t_s, self.ramp_s)  # soak

    @property
    def ramp_s(self) -> float:
        """Seconds by which the profile has reached ``users`` (the full load)."""
        if self.name == "ramp":
            return RAMP_FRACTION * self.duration_s
        if self.name == "soak":
            return min(SOAK_RAMP_FRACTION * self.duration_s, SOAK_RAMP_MAX_S)
        if self.name == "step":
            steps = min(self.users, MAX_STEPS)
            return self.duration_s * (steps - 1) / steps
        if self.name == "spike":
            return SPIKE_WINDOW[0] * self.duration_s
        return 0.0

    def points(self, step_s: float = 1.0) -> list[tuple[float, int]]:
        """``(t_s, users)`` every ``step_s`` over the run, ending with 0 at ``duration_s``."""
        count = max(1, math.ceil(self.duration_s / step_s))
        out = [(round(i * step_s, 3), self.users_at(i * step_s)) for i in range(count)]
        return [*out, (self.duration_s, 0)]


def _ramp(start: int, end: int, t_s: float, over_s: float) -> int:
    """``start`` at 0 to ``end`` at ``over_s`` in equal whole-user increments, then ``end``."""
    if over_s <= 0 or t_s >= over_s:
        return end
    return min(end, start + int((end - start + 1) * t_s / over_s))


def make_profile(name: str, users: int, duration_s: float) -> LoadProfile:
    """A validated profile; :class:`InputError` says which argument to change."""
    if name not in PROFILES:
        raise InputError(f"--profile {name!r}: choose one of {', '.join(PROFILES)}")
    if not 1 <= users <= MAX_USERS:
        raise InputError(f"--users {users}: pick 1 to {MAX_USERS}")
    if not (math.isfinite(duration_s) and MIN_DURATION_S <= duration_s <= MAX_DURATION_S):
        raise InputError(f"--duration {duration_s:g}: pick {MIN_DURATION_S:g} to "
                         f"{MAX_DURATION_S:g} seconds")
    return LoadProfile(name, users, float(duration_s))
