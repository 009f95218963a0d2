"""The day's sysmon-meta.json is written like the daily files: never through a link."""

from __future__ import annotations

import json
import os
import tarfile
from datetime import date
from pathlib import Path

import pytest

from sysmon.store.archive import META_NAME, build_archive

DAY = date(2025, 9, 1)
META = {"day": DAY.isoformat(), "host": "0" * 32}


def _day(out: Path) -> Path:
    folder = out / DAY.isoformat()
    folder.mkdir(parents=True)
    (folder / "system.csv").write_text("ts,vm\n2025-09-01T00:00:00Z,work\n")
    return folder


def _archived_meta(path: Path) -> dict[str, object]:
    with tarfile.open(path, "r:gz") as tar:
        member = tar.getmember(f"{DAY.isoformat()}/{META_NAME}")
        assert member.isfile()
        stream = tar.extractfile(member)
        assert stream is not None
        return dict(json.load(stream))


@pytest.mark.parametrize("target_exists", [False, True], ids=["new-target", "existing-target"])
def test_a_planted_symlink_is_not_written_through_and_the_day_archives(
    tmp_path: Path, target_exists: bool
) -> None:
    """The daemon's user plants sysmon-meta.json -> a file elsewhere: the target is
    neither made nor changed, and the day still archives with its real metadata
    (it failed every night: a symlink member is not what verify expects)."""
    out = tmp_path / "out"
    folder = _day(out)
    target = tmp_path / "elsewhere"
    if target_exists:
        target.write_text("precious\n")
    (folder / META_NAME).symlink_to(target)
    archive = build_archive(out, DAY, META)
    assert _archived_meta(archive) == META
    if target_exists:
        assert target.read_text() == "precious\n"
    else:
        assert not target.exists()
    assert not (folder / META_NAME).is_symlink()


def test_a_planted_fifo_neither_hangs_nor_stops_the_archive(tmp_path: Path) -> None:
    """A FIFO under the name is moved aside, not opened (which would wait for a reader)."""
    out = tmp_path / "out"
    folder = _day(out)
    os.mkfifo(folder / META_NAME)
    archive = build_archive(out, DAY, META)
    assert _archived_meta(archive) == META


def test_a_meta_file_already_there_is_kept(tmp_path: Path) -> None:
    """A regular file under the name is the one an earlier run wrote: kept as is."""
    out = tmp_path / "out"
    folder = _day(out)
    (folder / META_NAME).write_text('{"day": "2025-09-01", "host": "earlier"}\n')
    archive = build_archive(out, DAY, META)
    assert _archived_meta(archive) == {"day": "2025-09-01", "host": "earlier"}
