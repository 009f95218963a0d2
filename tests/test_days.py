"""The store's read side: which day folders and archives a reader reads, and their members."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tracemalloc
from datetime import date
from pathlib import Path

import pytest
from test_archive import make_day

from sysmon.store import days as days_module
from sysmon.store.archive import build_archive
from sysmon.store.days import (
    ArchiveError,
    archive_day,
    archived_days,
    day_members,
    day_units,
    folder_members,
    tgz_path,
)


class TestArchiveDay:
    @pytest.mark.parametrize(
        ("name", "day"),
        [
            ("monitor-2025-09-01.tgz", date(2025, 9, 1)),
            ("monitor-2025-09-01.2.tgz", date(2025, 9, 1)),
            ("monitor-2025-13-01.tgz", None),
            ("monitor-2025-09-01.tar", None),
            ("other-2025-09-01.tgz", None),
            ("monitor-2025-09-01-old.tgz", None),
            ("monitor-2025-09-01.2.old.tgz", None),
            ("monitor-2025-09-01.\u0663.tgz", None),
            ("monitor-2025-09-01.10.tgz", date(2025, 9, 1)),
        ],
    )
    def test_names(self, name: str, day: date | None) -> None:
        """Only ``monitor-YYYY-MM-DD[.N].tgz`` names a day."""
        assert archive_day(name) == day


class TestDayUnits:
    def test_a_folder_wins_over_its_archive_and_days_come_in_order(self, tmp_path: Path) -> None:
        """An out_dir: its folders, and the archives of days it no longer has as folders."""
        for d in (1, 2):
            make_day(tmp_path, date(2025, 9, d))
            build_archive(tmp_path, date(2025, 9, d))
        shutil.rmtree(tmp_path / "2025-09-01")
        make_day(tmp_path, date(2025, 9, 3))
        assert day_units([tmp_path]) == [
            tgz_path(tmp_path, date(2025, 9, 1)),
            tmp_path / "2025-09-02",
            tmp_path / "2025-09-03",
        ]

    def test_a_day_sent_twice_is_read_once(self, tmp_path: Path) -> None:
        """A vault's folder with a day sent twice (``.2``): one of them is read, once."""
        make_day(tmp_path, date(2025, 9, 1))
        tgz = build_archive(tmp_path, date(2025, 9, 1))
        incoming = tmp_path / "incoming"
        incoming.mkdir()
        (incoming / "monitor-2025-09-01.tgz").write_bytes(tgz.read_bytes())
        (incoming / "monitor-2025-09-01.2.tgz").write_bytes(tgz.read_bytes())
        (unit,) = day_units([incoming])
        assert archive_day(unit.name) == date(2025, 9, 1)

    @pytest.mark.parametrize(
        ("copies", "newest"),
        [
            ((".tgz", ".2.tgz", ".3.tgz"), ".3.tgz"),
            ((".tgz", ".9.tgz", ".10.tgz"), ".10.tgz"),
            ((".2.tgz", ".tgz"), ".2.tgz"),
        ],
    )
    def test_of_a_days_copies_the_newest_is_read(
        self, tmp_path: Path, copies: tuple[str, ...], newest: str
    ) -> None:
        """A later copy is the whole day (the one before may be cut, or short of rows
        the folder had since): the copy with the highest ``.N`` is read, by number."""
        make_day(tmp_path, date(2025, 9, 1))
        tgz = build_archive(tmp_path, date(2025, 9, 1))
        incoming = tmp_path / "incoming"
        incoming.mkdir()
        for suffix in copies:
            (incoming / f"monitor-2025-09-01{suffix}").write_bytes(tgz.read_bytes())
        assert day_units([incoming]) == [incoming / f"monitor-2025-09-01{newest}"]

    @pytest.mark.parametrize("suffix", [".\u00b2.tgz", ".\u0663.tgz", ".\u2463.tgz"])
    def test_a_copy_number_in_other_digits_is_no_copy_number(
        self, tmp_path: Path, suffix: str
    ) -> None:
        """A name whose ``.N`` is digits to ``str.isdigit`` but not ASCII ('²', '٣')
        is no later copy: the day is read from the real one, not a traceback."""
        make_day(tmp_path, date(2025, 9, 1))
        tgz = build_archive(tmp_path, date(2025, 9, 1))
        incoming = tmp_path / "incoming"
        incoming.mkdir()
        (incoming / "monitor-2025-09-01.tgz").write_bytes(tgz.read_bytes())
        (incoming / f"monitor-2025-09-01{suffix}").write_bytes(b"")
        assert day_units([incoming]) == [incoming / "monitor-2025-09-01.tgz"]

    def test_a_folder_named_like_a_later_copy_does_not_hide_the_day(self, tmp_path: Path) -> None:
        """A directory ``monitor-DAY.7.tgz`` beside the day's archive is no copy of it:
        the archive is read (else the day's rows were silently gone)."""
        make_day(tmp_path, date(2025, 9, 1))
        tgz = build_archive(tmp_path, date(2025, 9, 1))
        incoming = tmp_path / "incoming"
        incoming.mkdir()
        (incoming / "monitor-2025-09-01.tgz").write_bytes(tgz.read_bytes())
        (incoming / "monitor-2025-09-01.7.tgz").mkdir()
        assert day_units([incoming]) == [incoming / "monitor-2025-09-01.tgz"]

    def test_a_path_that_is_no_day_is_named(self, tmp_path: Path) -> None:
        """A reader is told which path it cannot read, not given a traceback."""
        with pytest.raises(ArchiveError, match="not a day folder"):
            day_units([tmp_path / "nowhere"])


def test_a_folder_and_its_archive_hold_the_same_members(tmp_path: Path) -> None:
    """Readers see the same files and bytes, a day folder or its archive."""
    folder = make_day(tmp_path, date(2025, 9, 1))
    tgz = build_archive(tmp_path, date(2025, 9, 1))

    def read(unit: Path) -> dict[str, bytes]:
        out = {}
        for name, opener in day_members(unit):
            with opener() as stream:
                out[name] = stream.read()
        return out

    assert read(folder) == read(tgz)
    assert set(read(folder)) == {"system.csv", "alerts.csv"}
    assert folder_members(folder) == {
        f"2025-09-01/{name}": len(data) for name, data in read(folder).items()
    }
    assert archived_days(tmp_path) == [date(2025, 9, 1)]


def test_a_symlink_in_a_day_folder_is_not_read(tmp_path: Path) -> None:
    """A planted link to a file elsewhere is not one of the day's members."""
    folder = make_day(tmp_path, date(2025, 9, 1))
    secret = tmp_path / "secret"
    secret.write_text("x")
    (folder / "network.csv").symlink_to(secret)
    assert "network.csv" not in dict(day_members(folder))


def test_an_archive_of_countless_members_is_refused(tmp_path: Path) -> None:
    """A planted .tgz of millions of empty members (a few bytes each, gzipped) would fill
    memory with tarfile's list of them: past a day's worth, it is not a day's archive."""
    bomb = tmp_path / "monitor-2025-08-31.tgz"
    with tarfile.open(bomb, "w:gz") as tar:
        for i in range(days_module.MAX_MEMBERS + 1):
            tar.addfile(tarfile.TarInfo(f"junk{i}"), io.BytesIO())
    with pytest.raises(tarfile.TarError, match="members"):
        list(day_members(bomb))


def test_an_archive_with_a_huge_long_name_is_refused_unread(tmp_path: Path) -> None:
    """A GNU long-name (or pax) header is read whole by tarfile: one of 64 MiB gzips to
    64 KiB.  Past a name's worth, the archive is refused before it is read."""
    bomb = tmp_path / "monitor-2025-08-31.tgz"
    size = 64 << 20
    header = tarfile.TarInfo("././@LongLink")
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = size
    with gzip.open(bomb, "wb") as out:
        out.write(header.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(size >> 20):
            out.write(b"a" * (1 << 20))
        out.write(tarfile.TarInfo("system.csv").tobuf() + b"\0" * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(tarfile.TarError, match="header"):
            list(day_members(bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_an_archive_with_a_sparse_member_is_refused_unread(tmp_path: Path) -> None:
    """tarfile keeps every (offset, size) of a GNU sparse member's map, and a map of
    extension blocks has no end: 700 KiB gzipped held 600 MiB.  A day has no sparse file."""
    bomb = tmp_path / "monitor-2025-08-31.tgz"
    header = tarfile.TarInfo("system.csv")
    header.type = tarfile.GNUTYPE_SPARSE
    block = bytearray(header.tobuf(format=tarfile.GNU_FORMAT))
    block[482] = 1  # isextended
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    extension = bytearray(b"%011o\0%011o\0" % (1, 1) * 21 + bytes(8))
    extension[504] = 1
    with gzip.open(bomb, "wb") as out:
        out.write(bytes(block))
        for _ in range(20_000):
            out.write(bytes(extension))
        extension[504] = 0
        out.write(bytes(extension) + b"\0" * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(tarfile.TarError, match="sparse"):
            list(day_members(bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


@pytest.mark.parametrize("where", ["member", "after the end"])
def test_an_archive_that_unpacks_past_a_days_worth_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A gzip bomb: 1 MiB of zeros gzipped is 1 KiB, so a 1 GB file in the vault unpacks
    to a TB, read at ~0.5 GB/s -- about an hour of `export` or `report` per pass, in a
    skipped member or after the tar's end (read on to gzip's trailer).  Past
    MAX_DAY_BYTES unpacked it is not a day's archive."""
    monkeypatch.setattr(days_module, "MAX_DAY_BYTES", 4 << 20)
    bomb = tmp_path / "monitor-2025-08-31.tgz"
    junk = tarfile.TarInfo("2025-08-31/junk.bin")
    junk.size = 16 << 20
    with gzip.open(bomb, "wb") as out:
        if where == "member":
            out.write(junk.tobuf(format=tarfile.PAX_FORMAT))
        else:
            out.write(tarfile.TarInfo("2025-08-31/system.csv").tobuf() + b"\0" * 1024)
        for _ in range(16):
            out.write(bytes(1 << 20))
        out.write(b"\0" * 1024)
    with pytest.raises(tarfile.TarError, match="bytes unpacked"):
        list(day_members(bomb))
