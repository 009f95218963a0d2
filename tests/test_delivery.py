"""Delivery markers: the lock, each copy's attempt, and what reached the vault whole."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from test_archive import TODAY, make_day

from sysmon.store.archive import build_archive
from sysmon.store.delivery import (
    archive_lock,
    days_to_deliver,
    is_delivered,
    mark_delivered,
    outgoing_name,
    record_attempt,
    record_refused,
    stage_for_copy,
)

DAY = date(2025, 9, 1)


def test_one_run_at_a_time(tmp_path: Path) -> None:
    """A second run finds the lock held and is told so; after the first, it is free."""
    with archive_lock(tmp_path) as first, archive_lock(tmp_path) as second:
        assert (first, second) == (True, False)
    with archive_lock(tmp_path) as again:
        assert again


class TestOutgoingName:
    def test_a_copy_whose_outcome_is_unknown_makes_the_next_a_new_name(
        self, tmp_path: Path
    ) -> None:
        """The vault refuses a name it has: after an uncertain copy, ``.2``, then ``.3``."""
        assert outgoing_name(tmp_path, DAY) == "monitor-2025-09-01.tgz"
        (tmp_path / "archives").mkdir()
        record_attempt(tmp_path, DAY)
        assert outgoing_name(tmp_path, DAY) == "monitor-2025-09-01.2.tgz"
        record_attempt(tmp_path, DAY)
        assert outgoing_name(tmp_path, DAY) == "monitor-2025-09-01.3.tgz"

    def test_a_refused_copy_sent_nothing_and_keeps_the_name(self, tmp_path: Path) -> None:
        """Refused by policy: nothing landed, so the retry keeps the plain name."""
        (tmp_path / "archives").mkdir()
        record_attempt(tmp_path, DAY)
        record_refused(tmp_path, DAY)
        assert outgoing_name(tmp_path, DAY) == "monitor-2025-09-01.tgz"


class TestDelivered:
    def test_delivered_until_the_folder_grows(self, tmp_path: Path) -> None:
        """A day that got rows after its copy (a clock a day ahead) goes again."""
        folder = make_day(tmp_path, DAY)
        build_archive(tmp_path, DAY)
        assert days_to_deliver(tmp_path, TODAY) == [DAY]
        mark_delivered(tmp_path, DAY, "monitor-2025-09-01.tgz")
        assert is_delivered(tmp_path, DAY)
        assert days_to_deliver(tmp_path, TODAY) == []
        with (folder / "system.csv").open("a") as f:
            f.write("2025-09-01T23:59:59Z,work\n")
        assert not is_delivered(tmp_path, DAY)

    def test_an_older_marker_is_taken_at_its_word_and_junk_means_again(
        self, tmp_path: Path
    ) -> None:
        """One line (an older sysmon's): delivered; sizes that do not parse: not."""
        make_day(tmp_path, DAY)
        marker = tmp_path / "archives" / "monitor-2025-09-01.delivered"
        marker.parent.mkdir()
        marker.write_text("monitor-2025-09-01.tgz\n")
        assert is_delivered(tmp_path, DAY)
        marker.write_text("monitor-2025-09-01.tgz\n{not json\n")
        assert not is_delivered(tmp_path, DAY)

    def test_today_is_never_to_deliver(self, tmp_path: Path) -> None:
        make_day(tmp_path, TODAY)
        assert days_to_deliver(tmp_path, TODAY) == []


def test_the_staged_copy_is_the_archive_under_its_outgoing_name(tmp_path: Path) -> None:
    """A hard link: the bytes sent are the verified archive's, under the name chosen."""
    make_day(tmp_path, DAY)
    tgz = build_archive(tmp_path, DAY)
    link = stage_for_copy(tmp_path, DAY, "monitor-2025-09-01.2.tgz")
    assert link.name == "monitor-2025-09-01.2.tgz"
    assert link.stat().st_ino == tgz.stat().st_ino
    again = stage_for_copy(tmp_path, DAY, "monitor-2025-09-01.3.tgz")
    assert [p.name for p in again.parent.iterdir()] == [again.name]  # the last one only
