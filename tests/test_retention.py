"""Retention, the byte ceiling, the disk guard: delivered days only, oldest first, not today."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from fakes import write_tick
from test_archive import TODAY, make_day

from sysmon.protocol.metrics import Snapshot, SysRecord
from sysmon.records import ScrapeResult
from sysmon.store.archive import build_archive
from sysmon.store.delivery import is_delivered, mark_delivered
from sysmon.store.retention import data_bytes, prune


class TestPrune:
    def test_never_today_never_undelivered(self, tmp_path: Path) -> None:
        for d in range(1, 9):
            make_day(tmp_path, date(2025, 9, d))
        for d in (1, 2, 5):
            (tmp_path / "archives").mkdir(exist_ok=True)
            (tmp_path / "archives" / f"monitor-2025-09-0{d}.delivered").write_text("x\n")
        pruned = prune(tmp_path, TODAY, retention_days=3, min_free_bytes=0)
        assert pruned.folders == (date(2025, 9, 1), date(2025, 9, 2))
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("2025"))
        assert left == [f"2025-09-0{d}" for d in (3, 4, 5, 6, 7, 8)]

    def test_disk_guard_takes_oldest_delivered_first_then_warns(self, tmp_path: Path) -> None:
        for d in range(1, 9):
            make_day(tmp_path, date(2025, 9, d))
        (tmp_path / "archives").mkdir()
        for d in (3, 6):
            (tmp_path / "archives" / f"monitor-2025-09-0{d}.delivered").write_text("x\n")
        pruned = prune(tmp_path, TODAY, retention_days=14, min_free_bytes=2**62)
        assert pruned.folders == (date(2025, 9, 3), date(2025, 9, 6))
        assert pruned.low_on_space_undelivered
        assert (tmp_path / "2025-09-08").exists()
        assert (tmp_path / "2025-09-01").exists()


class TestByteCeiling:
    def test_over_the_ceiling_oldest_delivered_days_go_first_and_it_says_so(
        self, tmp_path: Path
    ) -> None:
        """Retention by size: only delivered days, oldest first, until under the ceiling."""
        for d in range(1, 8):
            folder = make_day(tmp_path, date(2025, 9, d))
            (folder / "network.csv").write_bytes(b"x" * 100_000)
            if d <= 5:
                (tmp_path / "archives").mkdir(exist_ok=True)
                (tmp_path / "archives" / f"monitor-2025-09-0{d}.delivered").write_text("x\n")
        pruned = prune(tmp_path, TODAY, retention_days=30, min_free_bytes=0, max_bytes=350_000)
        assert pruned.over_ceiling == (
            date(2025, 9, 1),
            date(2025, 9, 2),
            date(2025, 9, 3),
            date(2025, 9, 4),
        )
        assert [d.name for d in sorted(tmp_path.iterdir()) if d.name[0] == "2"] == [
            "2025-09-05",
            "2025-09-06",
            "2025-09-07",
        ]
        assert not pruned.ceiling_undelivered

    def test_undelivered_days_are_never_deleted_but_it_is_said(self, tmp_path: Path) -> None:
        for d in (6, 7):
            (make_day(tmp_path, date(2025, 9, d)) / "network.csv").write_bytes(b"x" * 100_000)
        pruned = prune(tmp_path, TODAY, retention_days=30, min_free_bytes=0, max_bytes=150_000)
        assert pruned.over_ceiling == ()
        assert pruned.ceiling_undelivered
        assert (tmp_path / "2025-09-06").is_dir()

    def test_under_the_ceiling_nothing_goes(self, tmp_path: Path) -> None:
        make_day(tmp_path, date(2025, 9, 1))
        pruned = prune(tmp_path, TODAY, retention_days=30, min_free_bytes=0, max_bytes=10**9)
        assert pruned.over_ceiling == ()


def test_data_bytes_counts_day_folders_and_archives(tmp_path: Path) -> None:
    """What the ceiling is measured by: the day folders and archives/, nothing else."""
    folder = make_day(tmp_path, date(2025, 9, 1))
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "monitor-2025-09-01.tgz").write_bytes(b"x" * 1000)
    (tmp_path / "sysmon-state.json").write_bytes(b"y" * 500)
    in_folder = sum(p.stat().st_size for p in folder.iterdir())
    assert data_bytes(tmp_path) == in_folder + 1000


def test_a_delivered_local_archive_goes_at_once(tmp_path: Path) -> None:
    """The vault has it: the local .tgz is removed, the folder kept for its retention."""
    make_day(tmp_path, date(2025, 9, 7))
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "monitor-2025-09-07.tgz").write_bytes(b"t")
    (archives / "monitor-2025-09-07.delivered").write_text("x\n")
    pruned = prune(tmp_path, TODAY, retention_days=14, min_free_bytes=0)
    assert pruned.archives == (date(2025, 9, 7),)
    assert pruned.folders == ()
    assert not (archives / "monitor-2025-09-07.tgz").exists()
    assert (tmp_path / "2025-09-07").is_dir()


def test_a_symlink_in_a_day_folder_counts_as_itself(tmp_path: Path) -> None:
    """A link to a big file counted the file: delivered days went early for
    bytes that are not the data's.  Only regular files count."""
    day = make_day(tmp_path, date(2025, 8, 28))
    before = data_bytes(tmp_path)
    big = tmp_path.parent / "big"
    with big.open("wb") as f:
        f.truncate(1 << 40)  # sparse: a terabyte that takes no disk
    (day / "disk.csv.bad-1").symlink_to(big)
    assert data_bytes(tmp_path) == before


def test_a_tick_committed_as_a_day_is_pruned_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock stepped back by the retention days writes into a delivered day that
    retention is about to remove.  Checked then removed without the commit's lock, the
    tick written between the two went with the folder.  Under the lock, the tick waits
    and is written into the day again, a new folder the archive sends as a later copy."""
    day = date(2025, 9, 1)
    ts = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
    snap = Snapshot(SysRecord(boot_id="b"), (), None, (), (), 0, 1, 1, 0)
    for n in range(2):
        write_tick(
            tmp_path,
            ts - timedelta(seconds=10 * (1 - n)),
            [ScrapeResult("work", "ok", 1, snapshot=snap)],
            None,
        )
    build_archive(tmp_path, day)
    mark_delivered(tmp_path, day, "monitor-2025-09-01.tgz")
    assert is_delivered(tmp_path, day)
    real = shutil.rmtree
    ticks: list[threading.Thread] = []

    def a_tick_comes_first(path: Path, *args: object, **kwargs: object) -> None:
        # The daemon's tick, in its own thread as the daemon runs it: given a second
        # to land before the folder goes (it cannot, with the lock held).
        tick = threading.Thread(
            target=write_tick,
            args=(
                tmp_path,
                ts + timedelta(seconds=10),
                [ScrapeResult("work", "ok", 1, snapshot=snap)],
                None,
            ),
        )
        tick.start()
        tick.join(1)
        ticks.append(tick)
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "rmtree", a_tick_comes_first)
    pruned = prune(tmp_path, TODAY, retention_days=3, min_free_bytes=0)
    assert pruned.folders == (day,)
    for tick in ticks:
        tick.join(30)
        assert not tick.is_alive()
    system = (tmp_path / "2025-09-01" / "system.csv").read_text()
    assert "2025-09-01T12:00:10Z,work" in system
    assert not is_delivered(tmp_path, day)
