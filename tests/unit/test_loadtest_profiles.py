"""Load profiles: the number of simulated users each profile asks for over a run."""

from __future__ import annotations

import itertools

import pytest

from load_tests.profiles import MAX_USERS, PROFILES, make_profile
from models.errors import InputError

pytestmark = pytest.mark.unit


def series(name: str, users: int = 8, duration: float = 100.0) -> list[int]:
    profile = make_profile(name, users, duration)
    return [profile.users_at(t / 2) for t in range(int(2 * duration))]


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_stays_within_one_and_users_and_ends_at_the_duration(name: str) -> None:
    profile = make_profile(name, 8, 100.0)
    values = series(name)
    assert min(values) >= 1 and max(values) == 8
    assert profile.users_at(100.0) == 0 and profile.users_at(1e6) == 0
    assert profile.users_at(-1.0) == 0
    assert profile.points(10.0)[-1] == (100.0, 0)


def test_constant_holds_every_user_from_the_start() -> None:
    assert set(series("constant")) == {8}


def test_ramp_climbs_one_user_at_a_time_over_the_first_half_then_holds() -> None:
    values = series("ramp")
    assert values[0] == 1
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(values))
    assert set(values[100:]) == {8}  # second half (t >= 50 s) at the full load
    assert make_profile("ramp", 8, 100.0).ramp_s == 50.0


def test_step_has_equal_plateaus() -> None:
    profile = make_profile("step", 8, 100.0)
    assert [profile.users_at(t) for t in (0, 24.9, 25, 50, 75, 99.9)] == [2, 2, 4, 6, 8, 8]
    assert make_profile("step", 2, 100.0).users_at(10) == 1  # fewer users than steps


def test_spike_jumps_to_every_user_in_the_middle_fifth_only() -> None:
    profile = make_profile("spike", 8, 100.0)
    assert [profile.users_at(t) for t in (0, 39.9, 40, 59.9, 60, 99)] == [2, 2, 8, 8, 2, 2]
    assert make_profile("spike", 3, 100.0).users_at(0) == 1


def test_soak_ramps_briefly_and_holds_for_the_rest() -> None:
    profile = make_profile("soak", 4, 600.0)
    assert profile.ramp_s == 60.0  # a tenth of the run, at most 60 s
    assert profile.users_at(0) == 1
    assert all(profile.users_at(t) == 4 for t in range(60, 600, 7))
    assert make_profile("soak", 4, 100.0).ramp_s == 10.0


@pytest.mark.parametrize(("name", "users", "duration", "hint"), [
    ("wave", 4, 60, "--profile"), ("ramp", 0, 60, "--users"),
    ("ramp", MAX_USERS + 1, 60, "--users"), ("ramp", 4, 1, "--duration"),
    ("ramp", 4, float("inf"), "--duration"),
])
def test_bad_arguments_name_the_option_to_change(name: str, users: int, duration: float,
                                                 hint: str) -> None:
    with pytest.raises(InputError, match=hint):
        make_profile(name, users, duration)
