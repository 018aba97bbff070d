"""
bench/week.py at a small N: a simulated week through the real Fetcher and a real responder.

The responder (``responders.Sign``) signs at the simulated time, so the
daemon's schedule, the HTTP exchange, validation and storage all run as in
production while days pass in seconds. The full run (N=2,000) and its
figures are in bench/README.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[1] / "bench" / "week.py"


def _week():
    spec = importlib.util.spec_from_file_location("bench_week", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_week"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_a_week_with_the_max_age_cas_send_costs_at_most_two_and_a_half_requests(tmp_path):
    """7-day responses, max-age = time left to nextUpdate: <= 2.5 CA requests per cert a week."""
    result = await _week().simulate(8, tmp_path, max_age="next_update", days=7, warmup_days=7)
    assert result.expired == 0
    assert result.cold_requests >= 8  # the start-up fetched every certificate ...
    assert 1.0 <= result.requests_per_cert_week <= 2.5  # ... then about twice a week
    assert result.cpu_s_per_day > 0


async def test_a_one_hour_max_age_is_followed_hourly_not_more(tmp_path):
    """max-age=3600: at most one request per certificate per hour (168 a week), none expired."""
    result = await _week().simulate(3, tmp_path, max_age=3600, days=0.5, warmup_days=0.25)
    assert result.expired == 0
    assert result.requests_per_cert_week == pytest.approx(168, rel=0.1)
