"""Load tests: simulated users over the real protocol (``avatarctl loadtest``).

:mod:`~load_tests.profiles` says how many users over time, :mod:`~load_tests.user` is one
user's session, :mod:`~load_tests.runner` schedules them and samples the server,
:mod:`~load_tests.report` and :mod:`~load_tests.slo` turn the sessions into figures and a
verdict, :mod:`~load_tests.capacity` searches for the most sessions held at the SLO. See
docs/loadtest.md.
"""
