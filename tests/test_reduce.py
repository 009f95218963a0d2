"""A day reduced to the charts' points; days joined, rates across midnight."""

from __future__ import annotations

import pytest

# The report's libraries: the README's `.[test]` has them not.
np = pytest.importorskip("numpy")
pytest.importorskip("pandas")

from sysmon import schema  # noqa: E402
from sysmon.commands.report.read import _Part  # noqa: E402
from sysmon.commands.report.reduce import Merge, to_unit  # noqa: E402


def test_units_come_from_the_schema() -> None:
    assert to_unit(schema.SYSTEM, "mem_used_kb", 2048.0, "MiB") == 2.0  # kB are KiB here
    assert to_unit(schema.NETWORK, "rx_bytes", 2048.0, "KiB") == 2.0
    with pytest.raises(ValueError, match="not bytes"):
        to_unit(schema.SYSTEM, "cpu_user", 1.0, "MiB")


def _day(first: tuple[float, float, float], last: tuple[float, float, float]) -> _Part:
    part = _Part()
    part.net_first[("work", "eth0")] = first
    part.net_last[("work", "eth0")] = last
    return part


def test_a_rate_across_midnight_joins_two_days() -> None:
    merge = Merge()
    merge.add(_day((0.0, 0.0, 0.0), (86_390.0, 1024.0, 0.0)))
    merge.add(_day((86_400.0, 1024.0 + 10 * 2048, 0.0), (90_000.0, 10**6, 0.0)))
    data = merge.data()
    assert data.rx["work"].t.tolist() == [86_400.0]
    assert np.allclose(data.rx["work"].v, [2.0])  # 2048 bytes a second: 2 KiB/s
    assert data.tx["work"].v.tolist() == [0.0]


def test_a_counter_that_went_back_gives_no_rate_across_midnight() -> None:
    merge = Merge()
    merge.add(_day((0.0, 0.0, 0.0), (86_390.0, 10**6, 0.0)))
    merge.add(_day((86_400.0, 5.0, 0.0), (90_000.0, 10.0, 0.0)))  # a restart
    assert merge.data().rx == {}
