"""The built packages (``make packages``) and the Debian roots .ci/run installs them into.

Tests of what a user installs read ``dist/`` (or ``$SYSMON_DIST``), never the
checkout's files; without a build they skip locally and fail in CI.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import IN_CI, IN_DEBIAN_ROOT, ROOT, require_root

DIST = Path(os.environ.get("SYSMON_DIST", ROOT / "dist"))
#: The Debian releases the packages are built on and installed into.
RELEASES = ("12", "13")
PACKAGES = ("sysmon", "sysmon-handler", "sysmon-netlog")


def dist() -> Path:
    """dist/ of ``make packages``: skip without it (fail in CI, which builds it)."""
    if not (DIST / "rpm").is_dir():
        if IN_CI:
            pytest.fail(f"{DIST} has no packages (.ci/run runs make packages first)")
        pytest.skip(f"no packages in {DIST}: run `make packages`")
    return DIST


def debs(release: str, *, upgrade: bool = False) -> list[Path]:
    """The three .debs built on Debian ``release`` (dist/next/: the upgrade's build)."""
    folder = dist() / "next" / f"debian{release}" if upgrade else dist() / f"debian{release}"
    found = sorted(folder.glob("*.deb"))
    if not found:
        if IN_CI:
            pytest.fail(f"no .deb in {folder} (.ci/run builds them on Debian 12 and in 13's root)")
        pytest.skip(f"no .deb in {folder}")
    assert sorted(p.name.split("_")[0] for p in found) == sorted(PACKAGES), found
    return found


def rpm(name: str) -> Path:
    (found,) = (dist() / "rpm").glob(f"{name}-[0-9]*.noarch.rpm")
    return found


def unpack_rpm(path: Path, into: Path) -> Path:
    """The RPM's payload as it lands on a system, under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    cpio = subprocess.run(["rpm2cpio", str(path)], capture_output=True, check=True).stdout
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=cpio, cwd=into, check=True
    )
    return into


def unpack_formula_tarball(into: Path) -> Path:
    """dist/sysmon-formula.tar.gz, the developers' copy of the formula, under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dist() / "sysmon-formula.tar.gz") as tar:
        tar.extractall(into, filter="data")
    return into


def debian_root(release: str) -> Path:
    """The fresh Debian ``release`` root .ci/run built (``SYSMON_DEBIAN<N>_ROOT``)."""
    if IN_DEBIAN_ROOT:
        pytest.skip(f"inside the {IN_DEBIAN_ROOT} root: the host's run installs into the roots")
    root = os.environ.get(f"SYSMON_DEBIAN{release}_ROOT")
    if not root:
        if IN_CI:
            pytest.fail(f"SYSMON_DEBIAN{release}_ROOT is required in CI (.ci/run builds it)")
        pytest.skip(f"no Debian {release} root (.ci/run builds one)")
    require_root(f"chroot into the Debian {release} root")
    return Path(root)


def in_root(
    root: Path, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside ``root`` with a clean environment; never raises on exit status."""
    base = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    return subprocess.run(
        [
            "chroot",
            str(root),
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def apt_get(root: Path, *args: str) -> None:
    """apt-get in ``root``: its Debian mirror only, no recommends (CI's time), confold."""
    done = in_root(
        root,
        [
            "apt-get",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            *args,
        ],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def purge_all(root: Path) -> None:
    """No sysmon package in ``root`` (tests leave it so; the Debian 13 suite runs there)."""
    installed = in_root(root, ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n"])
    present = [
        line.split()[0]
        for line in installed.stdout.splitlines()
        if line.split()[0] in PACKAGES and line.split()[1] != "not-installed"
    ]
    if present:
        apt_get(root, "purge", *present)
