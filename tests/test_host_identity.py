"""The host identity exists from the first tick; an export of any day folder needs no --host.

Issue #28 item 3: the identity (``out_dir/host-id``) was made by the first
nightly archive only, so ``sysmon export demo-out`` -- a newcomer's first
export -- and today's folder in sys-monitor failed without ``--host``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from conftest import run_sysmon
from fakes import FakeQubes, daemon_on_virtual_time, run_for

from sysmon import __version__
from sysmon.commands.export import ExportError, export
from sysmon.config import Config, ConfigError
from sysmon.store.archive import build_archive, day_meta
from sysmon.store.identity import (
    HOST_ID_NAME,
    HOST_NAME_NAME,
    IdentityError,
    host_identity,
    read_host_id,
)

HEX32 = re.compile(r"[0-9a-f]{32}")
START = datetime(2025, 8, 31, 12, 0, tzinfo=UTC)


def exported(paths: list[Path], **kwargs: object) -> str:
    buffer = io.StringIO()
    export(paths, buffer, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m sysmon demo --duration 2`` as a newcomer runs it."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    done = run_sysmon("demo", "--duration", "2", "--interval", "1", "--out-dir", out, timeout=60)
    assert done.returncode == 0, done.stderr
    return out


def test_export_after_the_demo_needs_no_host(demo_out, tmp_path):
    """The first export a newcomer tries: exit 0, the identity as the host label."""
    identity = (demo_out / HOST_ID_NAME).read_text().strip()
    assert HEX32.fullmatch(identity)
    done = run_sysmon("export", demo_out, "--ledger", tmp_path / "ledger.tsv", timeout=60)
    assert done.returncode == 0, done.stderr
    assert f'host="{identity}"' in done.stdout
    assert "host_name=" not in done.stdout  # none set: the labels as they always were
    (folder,) = [p for p in demo_out.iterdir() if p.is_dir() and p.name[:2] == "20"]
    again = run_sysmon("export", folder, "--no-ledger", timeout=60)  # today's folder alone
    assert again.returncode == 0, again.stderr
    assert f'host="{identity}"' in again.stdout


async def test_the_daemons_first_tick_makes_the_identity_and_the_name(tmp_path, autojump_clock):
    """``run`` (and ``once``, the same poll): after one tick the identity is there,
    with the configured host_name beside it."""
    daemon = daemon_on_virtual_time(tmp_path, FakeQubes({"work": "ok"}), START, host_name="laptop")
    await run_for(daemon, 15)
    assert HEX32.fullmatch(read_host_id(tmp_path) or "")
    assert (tmp_path / HOST_NAME_NAME).read_text() == "laptop\n"
    first = read_host_id(tmp_path)
    changed = daemon_on_virtual_time(tmp_path, FakeQubes({"work": "ok"}), START, host_name="desk")
    await run_for(changed, 15)
    assert read_host_id(tmp_path) == first  # made once, kept
    assert (tmp_path / HOST_NAME_NAME).read_text() == "desk\n"
    text = exported([tmp_path], fmt="openmetrics")
    assert f'host="{first}",host_name="desk",vm="work"' in text
    unnamed = daemon_on_virtual_time(tmp_path, FakeQubes({"work": "ok"}), START)
    await run_for(unnamed, 15)
    assert not (tmp_path / HOST_NAME_NAME).exists()  # unset again: no label


async def test_a_planted_identity_does_not_stop_the_rows(tmp_path, autojump_clock):
    """A link planted as host-id: not followed, not replaced, and every row still written."""
    target = tmp_path / "elsewhere"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / HOST_ID_NAME).symlink_to(target)
    daemon = daemon_on_virtual_time(tmp_path / "out", FakeQubes({"work": "ok"}), START)
    await run_for(daemon, 15)
    assert not target.exists()
    assert (tmp_path / "out" / HOST_ID_NAME).is_symlink()
    assert (tmp_path / "out" / "2025-08-31" / "system.csv").read_text().count("\n") == 2


def _day_folder(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    day = out / "2025-08-31"
    day.mkdir(parents=True)
    (day / "system.csv").write_text(
        "ts,vm,cpu_user,cpu_system,cpu_idle,load1,load5,load15,mem_total_kb,mem_used_kb,"
        "mem_avail_kb,swap_total_kb,swap_used_kb,procs_running,procs_blocked\n"
        "2025-08-31T12:00:00Z,work,1.0,2.0,97.0,0.10,0.20,0.30,100,50,50,0,0,1,0\n"
    )
    return out


def test_a_symlink_as_the_identity_is_not_followed(tmp_path):
    """host-id a link to a file that holds a perfect identity: refused, never read."""
    out = _day_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("0123456789abcdef0123456789abcdef\n")
    (out / HOST_ID_NAME).symlink_to(elsewhere)
    with pytest.raises(ExportError, match="--host"):
        exported([out / "2025-08-31"])
    with pytest.raises(IdentityError, match="not a regular file"):
        host_identity(out)
    assert elsewhere.read_text() == "0123456789abcdef0123456789abcdef\n"
    assert 'host="mine"' in exported([out / "2025-08-31"], host="mine")  # --host still wins


@pytest.mark.parametrize("junk", ["laptop\n", "", "0123456789abcdef\n", "A" * 5000])
def test_an_identity_that_does_not_look_like_one_is_refused(tmp_path, junk):
    """Only 32 hex digits are an identity (a planted ``laptop`` passed the label check)."""
    out = _day_folder(tmp_path)
    (out / HOST_ID_NAME).write_text(junk)
    done = run_sysmon("export", out, "--no-ledger", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "does not hold a host identity" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_fifo_as_the_identity_does_not_hang_the_export(tmp_path):
    out = _day_folder(tmp_path)
    os.mkfifo(out / HOST_ID_NAME)
    done = run_sysmon("export", out, "--no-ledger", timeout=30)
    assert done.returncode == 2, done.stderr
    assert "not a regular file" in done.stderr


def test_the_host_name_travels_in_the_archive(tmp_path):
    """The archive's sysmon-meta.json carries the name; its export labels host_name."""
    out = _day_folder(tmp_path)
    identity = host_identity(out)
    (out / HOST_NAME_NAME).write_text("laptop\n")
    day = date(2025, 8, 31)
    meta = day_meta(out, day, version=__version__, interval=10.0)
    assert meta["host_name"] == "laptop"
    tgz = build_archive(out, day, meta)
    (out / HOST_NAME_NAME).unlink()  # the folder's own metadata names it now
    assert f'host="{identity}",host_name="laptop",vm="work"' in exported([out / "2025-08-31"])
    shutil.rmtree(out / "2025-08-31")
    text = exported([tgz])
    assert f'host="{identity}",host_name="laptop",vm="work"' in text
    assert 'host="other",host_name="laptop"' in exported([tgz], host="other")
    influx = exported([tgz], fmt="influx")
    assert f"host={identity},host_name=laptop,vm=work" in influx


def test_a_planted_host_name_is_refused(tmp_path):
    out = _day_folder(tmp_path)
    host_identity(out)
    day = out / "2025-08-31"
    (day / "sysmon-meta.json").write_text(json.dumps({"host": "a" * 32, "host_name": 'x",vm="y'}))
    with pytest.raises(ExportError, match="host_name"):
        exported([day])


@pytest.mark.parametrize("bad", ["-rf", "a b", 'x"y', "x" * 65, 3, "é"])
def test_host_name_is_a_short_safe_label(bad):
    with pytest.raises(ConfigError, match="host_name"):
        Config(host_name=bad)
    assert Config(host_name="laptop-2.home").host_name == "laptop-2.home"
