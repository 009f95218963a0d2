"""Run the real handler the way qrexec would, under a chosen awk."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from conftest import FIXTURES, HANDLER

#: The awks the handler is run under.  "qrexec" executes the file, as qrexec does,
#: so its first line picks the interpreter (mawk); the others run it in awks a
#: template may have instead: Fedora's gawk (also in POSIX mode), busybox's, and
#: the one true awk of "The AWK Programming Language".
AWKS = {
    "qrexec": [],
    "mawk": ["mawk", "-f"],
    "gawk": ["gawk", "-f"],
    "gawk-posix": ["gawk", "--posix", "-f"],
    "busybox": ["busybox", "awk", "-f"],
    "one-true-awk": ["original-awk", "-f"],
}
STUB_BIN = FIXTURES.parent / "bin"


def run_handler(
    awk: str,
    *,
    proc_root: Path | None = None,
    argument: str = "",
    journal_dir: Path | None = None,
    timeout: float = 30,
    extra_env: dict[str, str] | None = None,
    as_user: str | None = None,
    cwd: Path | None = None,
    locale: str = "C",
    handler: Path = HANDLER,
) -> bytes:
    """Run handler/qubes.Metrics.Get; return its stdout (it must exit 0).

    ``as_user`` runs it as that user (needs root), as qrexec runs it as the qube's user;
    ``locale`` is the qube's (a Fedora template's login shell sets a UTF-8 one);
    ``handler`` another copy of it (a package's payload).
    """
    env = {"PATH": os.environ["PATH"], "USER": "user", "LC_ALL": locale}
    if proc_root is not None:
        env["SYSMON_PROC_ROOT"] = str(proc_root)
        env["SYSMON_DF_FIXTURE"] = str(proc_root / "df.txt")
        env["PATH"] = f"{STUB_BIN}:{env['PATH']}"
    if journal_dir is not None:
        env["SYSMON_JOURNAL_DIR"] = str(journal_dir)
    if argument:
        env["QREXEC_SERVICE_ARGUMENT"] = argument
    env.update(extra_env or {})
    argv = [*AWKS[awk], str(handler)] + ([argument] if argument else [])
    if as_user is not None:
        ids = pwd.getpwnam(as_user)
        argv = [
            "setpriv",
            f"--reuid={ids.pw_uid}",
            f"--regid={ids.pw_gid}",
            "--clear-groups",
            *argv,
        ]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"", done.stderr
    return done.stdout
