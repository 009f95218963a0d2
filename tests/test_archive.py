"""The nightly archive: build, verify, deliver exactly once, prune safely."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import trio
from conftest import ROOT, require_tool, run_on_small_tmpfs
from dateutil import tz
from fakequbes.world import leftover_processes, make_world
from fakes import inline
from structlog.testing import capture_logs

from sysmon import __version__
from sysmon.commands.archive import NightlyArchive, next_archive_time, qvm_copy_to_vm, run_archive
from sysmon.config import Config
from sysmon.schema import SCHEMA_VERSION
from sysmon.store.archive import HOST_ID_NAME, META_NAME, build_archive, host_identity
from sysmon.store.days import ArchiveError, tgz_path
from sysmon.store.delivery import is_delivered, record_attempt

TODAY = date(2025, 9, 8)


def make_day(out: Path, day: date, rows: int = 3) -> Path:
    folder = out / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "system.csv").write_text(
        "ts,vm\n" + "".join(f"{day}T00:00:{i:02d}Z,work\n" for i in range(rows))
    )
    (folder / "alerts.csv").write_text("ts,vm,msg\n")
    return folder


class FakeVault:
    """A vault's QubesIncoming with qfile-unpacker's O_EXCL, and a power switch."""

    def __init__(self, root: Path) -> None:
        self.incoming = root / "QubesIncoming" / "sys-monitor"
        self.up = True
        self.copies: list[str] = []

    async def copy(self, vault: str, path: Path) -> int:
        assert vault == "secrets-vault"
        self.copies.append(path.name)
        if not self.up:
            return 126
        self.incoming.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.incoming / path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return 1
        with os.fdopen(fd, "wb") as f:
            f.write(path.read_bytes())
        return 0

    def days(self) -> list[str]:
        return sorted(p.name for p in self.incoming.iterdir()) if self.incoming.exists() else []


class TestBuild:
    def test_members_and_sizes_match_the_folder(self, tmp_path):
        folder = make_day(tmp_path, date(2025, 9, 1))
        path = build_archive(tmp_path, date(2025, 9, 1))
        assert path == tmp_path / "archives" / "monitor-2025-09-01.tgz"
        with tarfile.open(path) as tar:
            assert sorted((m.name, m.size) for m in tar) == sorted(
                (f"2025-09-01/{p.name}", p.stat().st_size) for p in folder.iterdir()
            )
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left

    def test_a_damaged_archive_is_rebuilt(self, tmp_path):
        make_day(tmp_path, date(2025, 9, 1))
        path = build_archive(tmp_path, date(2025, 9, 1))
        path.write_bytes(path.read_bytes()[:40])
        assert build_archive(tmp_path, date(2025, 9, 1)) == path
        with tarfile.open(path) as tar:
            assert len(tar.getnames()) == 2

    def test_missing_day(self, tmp_path):
        with pytest.raises(ArchiveError, match="no day folder"):
            build_archive(tmp_path, date(2025, 9, 1))


class TestDeliver:
    async def test_two_runs_at_once_deliver_each_day_once(self, tmp_path):
        """The nightly task and a `sysmon archive` at once: one delivers, the other is busy."""
        make_day(tmp_path, date(2025, 9, 7))
        vault = FakeVault(tmp_path / "vault")

        async def slow_copy(vault_name: str, path: Path) -> int:
            await trio.sleep(0.2)  # both runs are now past "not yet delivered"
            return await vault.copy(vault_name, path)

        reports = []

        async def one() -> None:
            reports.append(
                await run_archive(Config(out_dir=tmp_path), TODAY, copier=slow_copy, offload=inline)
            )

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)
                nursery.start_soon(one)
        assert vault.days() == ["monitor-2025-09-07.tgz"]
        assert len(vault.copies) == 1
        assert sorted(r.busy for r in reports) == [False, True]

    async def test_three_missed_days_caught_up_in_order(self, tmp_path):
        for d in (5, 6, 7, 8):
            make_day(tmp_path, date(2025, 9, d))
        vault = FakeVault(tmp_path / "vault")
        report = await run_archive(
            Config(out_dir=tmp_path), TODAY, copier=vault.copy, offload=inline
        )
        assert [(o.day.day, o.status) for o in report.days] == [
            (5, "delivered"),
            (6, "delivered"),
            (7, "delivered"),
        ]
        assert vault.days() == [
            "monitor-2025-09-05.tgz",
            "monitor-2025-09-06.tgz",
            "monitor-2025-09-07.tgz",
        ]
        assert not is_delivered(tmp_path, TODAY)
        again = await run_archive(
            Config(out_dir=tmp_path), TODAY, copier=vault.copy, offload=inline
        )
        assert again.days == ()
        assert len(vault.copies) == 3

    async def test_crash_between_copy_and_marker_resends_under_a_new_name(self, tmp_path):
        """The vault refuses a name it has (O_EXCL): the resend is .2, then marked."""
        make_day(tmp_path, date(2025, 9, 7))
        vault = FakeVault(tmp_path / "vault")
        build_archive(tmp_path, date(2025, 9, 7))
        record_attempt(tmp_path, date(2025, 9, 7))  # the crashed run got this far...
        await vault.copy("secrets-vault", tgz_path(tmp_path, date(2025, 9, 7)))  # ...and copied
        report = await run_archive(
            Config(out_dir=tmp_path), TODAY, copier=vault.copy, offload=inline
        )
        assert [o.status for o in report.days] == ["delivered"]
        assert vault.days() == ["monitor-2025-09-07.2.tgz", "monitor-2025-09-07.tgz"]
        assert is_delivered(tmp_path, date(2025, 9, 7))

    async def test_refusal_keeps_the_plain_name_for_the_retry(self, tmp_path):
        make_day(tmp_path, date(2025, 9, 7))
        vault = FakeVault(tmp_path / "vault")
        vault.up = False
        report = await run_archive(
            Config(out_dir=tmp_path), TODAY, copier=vault.copy, offload=inline
        )
        assert [o.status for o in report.days] == ["refused"]
        vault.up = True
        await run_archive(Config(out_dir=tmp_path), TODAY, copier=vault.copy, offload=inline)
        assert vault.days() == ["monitor-2025-09-07.tgz"]

    async def test_hung_copy_times_out_and_leaves_no_process(self, tmp_path):
        make_day(tmp_path, date(2025, 9, 7))
        env = make_world(tmp_path / "world", {})
        (tmp_path / "world" / "vault").mkdir()
        (tmp_path / "world" / "vault" / "mode").write_text("hang\n")
        os.environ.update(env)  # the copier finds the fake on PATH
        try:
            with trio.fail_after(20):
                report = await run_archive(
                    Config(out_dir=tmp_path), TODAY, copier=qvm_copy_to_vm, copy_timeout=1
                )
        finally:
            for key in env:
                os.environ.pop(key, None)
            os.environ["PATH"] = env["PATH"].split(":", 1)[1]
        assert [o.status for o in report.days] == ["timeout"]
        assert leftover_processes(tmp_path / "world") == []


class TestSchedule:
    def test_local_time_across_dst(self):
        berlin = tz.gettz("Europe/Berlin")
        # Spring forward on 2025-03-30: 03:50 CEST is 01:50 UTC, 23 h after the day before.
        before = datetime(2025, 3, 29, 1, 0, tzinfo=UTC)  # 02:00 CET
        first = next_archive_time(before, "03:50", berlin)
        assert first == datetime(2025, 3, 29, 2, 50, tzinfo=UTC)
        second = next_archive_time(first, "03:50", berlin)
        assert second == datetime(2025, 3, 30, 1, 50, tzinfo=UTC)
        assert second - first == timedelta(hours=23)
        # Fall back on 2025-10-26: 25 h.
        f1 = next_archive_time(datetime(2025, 10, 25, 1, 0, tzinfo=UTC), "03:50", berlin)
        f2 = next_archive_time(f1, "03:50", berlin)
        assert f2 - f1 == timedelta(hours=25)

    def test_a_time_in_the_gap_moves_past_it(self):
        berlin = tz.gettz("Europe/Berlin")
        at = next_archive_time(datetime(2025, 3, 29, 23, 0, tzinfo=UTC), "02:30", berlin)
        assert at == datetime(2025, 3, 30, 1, 30, tzinfo=UTC)  # 03:30 CEST


async def test_a_week_with_the_vault_down_two_nights(tmp_path, autojump_clock):
    """Each day reaches the vault exactly once; nothing undelivered is deleted."""
    berlin = tz.gettz("Europe/Berlin")
    start = datetime(2025, 3, 26, 12, 0, tzinfo=UTC)  # a week across the DST change
    days = [date(2025, 3, 25) + timedelta(days=i) for i in range(9)]
    for d in days:
        make_day(tmp_path, d)
    vault = FakeVault(tmp_path / "vault")
    down = {date(2025, 3, 28), date(2025, 3, 30)}
    t0 = trio.current_time()
    deleted_undelivered: list[date] = []

    def wall() -> datetime:
        return start + timedelta(seconds=trio.current_time() - t0)

    async def copy(vault_name: str, path: Path) -> int:
        # Down from midnight to 20:00 UTC on those days: the hourly retries fail, then one lands.
        now = wall()
        vault.up = not (now.date() in down and now.hour < 20)
        for d in days:
            if not (tmp_path / d.isoformat()).exists() and not is_delivered(tmp_path, d):
                deleted_undelivered.append(d)
        return await vault.copy(vault_name, path)

    notes: list[str] = []
    nightly = NightlyArchive(
        Config(out_dir=tmp_path, retention_days=2),
        note=notes.append,
        wall_now=wall,
        copier=copy,
        offload=inline,
        zone=berlin,
    )
    with capture_logs(), trio.move_on_after(7 * 86400):
        await nightly.run()
    delivered = vault.days()
    assert delivered == [f"monitor-{d}.tgz" for d in days if d < date(2025, 4, 2)]
    assert deleted_undelivered == []
    refused_nights = set(vault.copies) - set(delivered)
    assert refused_nights == set()
    # Each night the vault is down refuses the archive of the day before, once.
    refused = [n.split(" refused")[0] for n in notes]
    assert refused == ["sysmon: archive of 2025-03-27", "sysmon: archive of 2025-03-29"]


def test_cli_is_idempotent_and_says_why_it_fails(tmp_path):
    require_tool("sh")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    before = yesterday - timedelta(days=1)
    make_day(tmp_path / "out", before)
    env = {**os.environ, **make_world(tmp_path / "world", {}), "PYTHONPATH": str(ROOT)}
    (tmp_path / "world" / "vault").mkdir()
    argv = [sys.executable, "-m", "sysmon", "archive", "--out-dir", str(tmp_path / "out")]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, *extra], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    first = run()
    assert first.returncode == 0, first.stderr
    assert f"{before}  delivered" in first.stdout
    assert run().stdout.startswith("nothing to archive")
    forced = run("--day", before.isoformat(), "--force")
    assert forced.returncode == 0, forced.stderr
    incoming = tmp_path / "world" / "vault" / "home" / "QubesIncoming" / "sys-monitor"
    assert sorted(p.name for p in incoming.iterdir()) == [
        f"monitor-{before}.2.tgz",
        f"monitor-{before}.tgz",
    ]
    make_day(tmp_path / "out", yesterday)
    (tmp_path / "world" / "vault" / "mode").write_text("refuse\n")
    refused = run()
    assert refused.returncode == 1
    assert "refused" in refused.stderr
    assert run("--day", "nope").returncode == 2


FULL_DISK_ARCHIVE = """
import os, sys
from datetime import date
from pathlib import Path
from sysmon.store.archive import build_archive
from sysmon.store.days import ArchiveError
out = Path(sys.argv[1])
day = out / "2025-09-01"
day.mkdir(parents=True)
(day / "system.csv").write_bytes(os.urandom(300_000))  # incompressible
filler = out / "filler"
filler.write_bytes(b"x" * 500_000)
try:
    build_archive(out, date(2025, 9, 1))
except ArchiveError as exc:
    print("failed:", exc)
print("left:", sorted(p.name for p in (out / "archives").iterdir()))
filler.unlink()  # space comes back
print("built:", build_archive(out, date(2025, 9, 1)).name)
"""


def test_full_disk_while_building_the_tar(tmp_path):
    """On a real, too small filesystem: a clear failure, no partial archive
    under any name, and a whole one once there is room."""
    done = run_on_small_tmpfs(FULL_DISK_ARCHIVE, "1m", tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("failed: writing monitor-2025-09-01.tgz: No space left on device")
    assert lines[1] == "left: []"
    assert lines[2] == "built: monitor-2025-09-01.tgz"


def test_a_cut_copy_is_resent_under_a_new_name(tmp_path):
    """The fake vault keeps half a file (no O_TMPFILE): the retry cannot reuse the
    name, so it lands as .2 and the day is delivered once, whole."""
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    make_day(tmp_path / "out", yesterday)
    env = {**os.environ, **make_world(tmp_path / "world", {}), "PYTHONPATH": str(ROOT)}
    (tmp_path / "world" / "vault").mkdir()
    (tmp_path / "world" / "vault" / "mode").write_text("truncate\n")
    argv = [sys.executable, "-m", "sysmon", "archive", "--out-dir", str(tmp_path / "out")]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 1
    assert "qvm-copy-to-vm failed (exit 1)" in first.stderr
    (tmp_path / "world" / "vault" / "mode").write_text("ok\n")
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    incoming = tmp_path / "world" / "vault" / "home" / "QubesIncoming" / "sys-monitor"
    whole = incoming / f"monitor-{yesterday}.2.tgz"
    with tarfile.open(whole) as tar:
        assert len(tar.getnames()) == 3  # two CSV files and where they came from
        member = tar.extractfile(f"{yesterday}/{META_NAME}")
        assert member is not None
        meta = json.loads(member.read())
    identity = (tmp_path / "out" / HOST_ID_NAME).read_text().strip()
    assert meta == {
        "schema": SCHEMA_VERSION,
        "sysmon": __version__,
        "host": identity,
        "day": yesterday.isoformat(),
        "interval_s": 10.0,
    }
    assert is_delivered(tmp_path / "out", yesterday)


def test_the_host_identity_is_made_once_and_kept(tmp_path):
    first = host_identity(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert host_identity(tmp_path) == first  # a restart, a rename: the same host
    (tmp_path / HOST_ID_NAME).write_text("../../etc/passwd\n")
    with pytest.raises(ArchiveError, match="does not hold a host identity"):
        host_identity(tmp_path)


@pytest.mark.parametrize(
    ("mode", "code", "reason"),
    [
        (None, 17, "the vault already has a file of that name"),
        ("full", 28, "the vault is full"),
    ],
)
def test_the_vaults_errno_is_explained_and_retried(tmp_path, mode, code, reason):
    """qvm-copy-to-vm exits with the vault's errno (recorded: 17 for a name it has)."""
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    make_day(tmp_path / "out", yesterday)
    env = {**os.environ, **make_world(tmp_path / "world", {}), "PYTHONPATH": str(ROOT)}
    incoming = tmp_path / "world" / "vault" / "home" / "QubesIncoming" / "sys-monitor"
    incoming.mkdir(parents=True)
    if mode is None:  # an earlier copy landed, but its outcome was lost
        (incoming / f"monitor-{yesterday}.tgz").write_bytes(b"older copy")
    else:
        (tmp_path / "world" / "vault" / "mode").write_text(mode + "\n")
    argv = [sys.executable, "-m", "sysmon", "archive", "--out-dir", str(tmp_path / "out")]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 1
    assert f"qvm-copy-to-vm failed (exit {code}: {reason}" in first.stderr
    (tmp_path / "world" / "vault" / "mode").write_text("ok\n")
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert (incoming / f"monitor-{yesterday}.2.tgz").is_file()
    assert is_delivered(tmp_path / "out", yesterday)


async def test_the_nightly_task_says_what_the_ceiling_deleted(tmp_path, autojump_clock):
    """alerts.csv hears of delivered days deleted for the byte ceiling."""
    for d in (5, 6, 7):
        (make_day(tmp_path, date(2025, 9, d)) / "network.csv").write_bytes(b"x" * 600_000)
    vault = FakeVault(tmp_path / "vault")
    notes: list[str] = []
    nightly = NightlyArchive(
        Config(out_dir=tmp_path, max_data_mb=1),
        note=notes.append,
        wall_now=lambda: datetime(2025, 9, 8, 4, 0, tzinfo=UTC),
        copier=vault.copy,
        offload=inline,
    )
    with trio.move_on_after(60):
        await nightly.run()
    assert any(n.startswith("sysmon: data over its ceiling of 1 MB: deleted") for n in notes)
    assert [p.name for p in sorted(tmp_path.iterdir()) if p.name[0] == "2"] == ["2025-09-07"]


async def test_a_file_error_in_the_run_is_said_and_retried_not_the_daemons_end(
    tmp_path, autojump_clock
):
    """A file error outside a day's own steps -- the lock's file planted as a
    folder, a day folder retention cannot remove -- escaped the nightly task and
    ended `sysmon run` (restarted, again and again).  It is said once in
    alerts.csv and the run tried again with backoff; cleared, the day goes."""
    make_day(tmp_path, date(2025, 9, 7))
    (tmp_path / ".sysmon-archive.lock").mkdir()
    vault = FakeVault(tmp_path / "vault")
    notes: list[str] = []
    nightly = NightlyArchive(
        Config(out_dir=tmp_path),
        note=notes.append,
        wall_now=lambda: datetime(2025, 9, 8, 4, 0, tzinfo=UTC),
        copier=vault.copy,
        offload=inline,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(nightly.run)
        await trio.sleep(3 * 3600)  # hourly, then every two hours: said once
        assert len(notes) == 1
        assert notes[0].startswith("sysmon: archive run failed: ")
        assert vault.days() == []
        (tmp_path / ".sysmon-archive.lock").rmdir()
        await trio.sleep(6 * 3600)
        nursery.cancel_scope.cancel()
    assert vault.days() == ["monitor-2025-09-07.tgz"]


FULL_DISK_MARKER = """
import os, sys
from datetime import date
from pathlib import Path
import trio
from sysmon.commands.archive import run_archive
from sysmon.config import Config
from sysmon import __version__
from sysmon.store.archive import build_archive, day_meta
from sysmon.store.delivery import is_delivered, record_attempt, record_refused
out = Path(sys.argv[1])
day = out / "2025-09-07"
day.mkdir(parents=True)
(day / "system.csv").write_bytes(b"ts,vm\\n")
# Built last night (the vault was down), with the host's identity of the first tick.
meta = day_meta(out, date(2025, 9, 7), version=__version__, interval=10.0)
build_archive(out, date(2025, 9, 7), meta)
record_attempt(out, date(2025, 9, 7))
record_refused(out, date(2025, 9, 7))
filler = out / "filler"
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # the disk fills up during the day
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    os.close(fd)
copies = []

async def vault(name, path):
    copies.append(path.name)
    return 0

async def main():
    report = await run_archive(
        Config(out_dir=out), date(2025, 9, 8), copier=vault, min_free_bytes=1 << 30
    )
    print([(o.status, o.detail) for o in report.days])
    print("low:", report.pruned.low_on_space_undelivered)  # retention ran
    print("delivered:", is_delivered(out, date(2025, 9, 7)))  # no marker cut short

trio.run(main)
print("copies:", copies)
filler.unlink()
"""


def test_a_full_disk_after_the_copy_is_a_failed_day_not_a_crash(tmp_path):
    """The vault took the day, but its marker cannot be written: one failed day, said;
    the run goes on to retention. It raised, which stopped `sysmon run`; restarted, its
    catch-up sent the day again as a later copy and stopped it again, every few seconds
    (rows lost while it was down, a copy into the vault each time)."""
    done = run_on_small_tmpfs(FULL_DISK_MARKER, "1m", tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "archive_failed" not in line]
    assert lines == [
        (
            "[('failed', 'delivered, but its marker cannot be written: "
            "No space left on device; sent again as a later copy')]"
        ),
        "low: True",
        "delivered: False",
        "copies: ['monitor-2025-09-07.tgz']",
    ]


async def test_a_symlink_moved_aside_does_not_stop_every_later_archive(tmp_path):
    """A symlink planted as a daily file is moved aside in its day folder; that day
    and every later one must still be delivered (its link member failed verification
    every night: nothing delivered again, nothing pruned, the disk filled)."""
    from sysmon.store.daily import ensure_day  # noqa: PLC0415

    secret = tmp_path / "secret"
    secret.write_text("not the day's\n")
    out = tmp_path / "out"
    make_day(out, date(2025, 9, 6))
    (out / "2025-09-06" / "system.csv").unlink()
    (out / "2025-09-06" / "system.csv").symlink_to(secret)
    ensure_day(out, date(2025, 9, 6), [])  # the daemon's tick moves it aside
    make_day(out, date(2025, 9, 7))
    vault = FakeVault(tmp_path / "vault")
    with capture_logs():
        report = await run_archive(Config(out_dir=out), TODAY, copier=vault.copy, offload=inline)
    assert [(o.day.day, o.status) for o in report.days] == [(6, "delivered"), (7, "delivered")]
    with tarfile.open(vault.incoming / "monitor-2025-09-06.tgz") as tar:
        assert all(m.isfile() and "bad-" not in m.name for m in tar)
    assert is_delivered(out, date(2025, 9, 6))


async def test_a_failure_after_a_good_night_is_retried_within_hours(tmp_path, autojump_clock):
    """A failure was retried with backoff only until the task's first good run:
    after it, the loop slept on to the next night's archive_at before trying
    again, so a vault down at 03:50 (or a full disk, a file error) cost a whole
    day, not an hour.  Refused at 03:50, the vault up at 06:00: delivered that
    morning."""
    start = datetime(2025, 9, 8, 12, 0, tzinfo=UTC)
    make_day(tmp_path, date(2025, 9, 7))
    make_day(tmp_path, date(2025, 9, 8))
    vault = FakeVault(tmp_path / "vault")
    t0 = trio.current_time()

    def wall() -> datetime:
        return start + timedelta(seconds=trio.current_time() - t0)

    async def copy(vault_name: str, path: Path) -> int:
        vault.up = not (wall().date() == date(2025, 9, 9) and wall().hour < 6)
        return await vault.copy(vault_name, path)

    nightly = NightlyArchive(
        Config(out_dir=tmp_path), note=lambda _: None, wall_now=wall, copier=copy,
        offload=inline, zone=UTC,
    )  # fmt: skip
    with capture_logs(), trio.move_on_after(86400 - 3600):  # to 11:00 the next day
        await nightly.run()
    assert vault.days() == ["monitor-2025-09-07.tgz", "monitor-2025-09-08.tgz"]


KILLED_MID_COMMIT = """
import os, signal, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from fakes import write_tick
from sysmon.protocol.metrics import Snapshot, SysRecord
from sysmon.records import ScrapeResult
from sysmon.store import commit
out = Path(sys.argv[1])
snap = Snapshot(SysRecord(boot_id="b"), (), None, (), (), 0, 1, 1, 0)
ts = datetime(2025, 9, 7, 23, 59, 50, tzinfo=UTC)
write_tick(out, ts - timedelta(seconds=10), [ScrapeResult("work", "ok", 1, snapshot=snap)], None)
real = commit.append_rows
def append_then_die(path, daily, rows, *, sync=True):
    real(path, daily, rows, sync=sync)
    if path.name == "system.csv":
        os.kill(os.getpid(), signal.SIGKILL)
commit.append_rows = append_then_die
write_tick(out, ts, [ScrapeResult("work", "ok", 1, snapshot=snap)], None)
"""


async def test_a_tick_a_kill_cut_short_is_rolled_back_before_its_day_is_packed(tmp_path):
    """`sysmon run` killed -9 mid-commit at 23:59:50 (system.csv had the tick,
    scrapes.csv not yet), restarted after midnight: its catch-up packed the day
    before any tick had rolled the cut one back, so the vault got the tick in
    some files and not others; the next tick cut it from the folder, and the
    day went again the next night as a later copy."""
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_COMMIT, str(out), str(ROOT / "tests")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    vault = FakeVault(tmp_path / "vault")
    with capture_logs():
        report = await run_archive(Config(out_dir=out), TODAY, copier=vault.copy, offload=inline)
    assert [o.status for o in report.days] == ["delivered"]
    with tarfile.open(vault.incoming / "monitor-2025-09-07.tgz") as tar:
        sent = {Path(m.name).name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    for name in ("system.csv", "scrapes.csv"):
        assert b"23:59:40Z" in sent[name], name
        assert b"23:59:50Z" not in sent[name], name
    assert is_delivered(out, date(2025, 9, 7))
