"""CPU percentages from raw tick counters: same boot only, never negative."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from sysmon.transform.rates import cpu_percent

TS = datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC)


class TestCpuPercent:
    def test_shares_of_elapsed_ticks(self):
        prev = (100, 0, 50, 1000, 0, 0, 0, 0)
        cur = (110, 5, 57, 1070, 5, 2, 1, 0)
        pct = cpu_percent(prev, cur)
        assert pct is not None
        assert (pct.user, pct.system, pct.idle) == (15.0, 10.0, 75.0)

    def test_steal_counts_in_the_total(self):
        pct = cpu_percent((0,) * 8, (10, 0, 10, 60, 0, 0, 0, 20))
        assert pct is not None
        assert (pct.user, pct.system, pct.idle) == (10.0, 10.0, 60.0)

    def test_no_value_without_a_usable_previous_sample(self):
        assert cpu_percent(None, (1,) * 8) is None
        assert cpu_percent((5,) * 8, (4,) + (5,) * 7) is None  # backwards
        assert cpu_percent((5,) * 8, (5,) * 8) is None  # no time passed
        assert cpu_percent((5,) * 7, (6,) * 8) is None

    @given(
        st.lists(st.integers(0, 2**40), min_size=8, max_size=8),
        st.lists(st.integers(0, 2**40), min_size=8, max_size=8),
    )
    def test_never_negative_never_above_100(self, a, b):
        pct = cpu_percent(tuple(a), tuple(b))
        if pct is not None:
            for value in (pct.user, pct.system, pct.idle):
                assert 0 <= value <= 100
