"""How sysmon reaches qubes: ``qrexec-client-vm`` argv and its exit codes.

Pure except for :class:`Qrexec`'s calls, which go through
:mod:`sysmon.collector.runner`.  Exit codes and framing follow
qubes-core-qrexec 4.2 and 4.3 (``agent/qrexec-client-vm.c``, ``libqrexec/qrexec.h``;
recorded in ``tests/fixtures/qubes/qrexec-client-vm*.json``):
126 refused, 127 no such service in the target, 125 another qrexec
failure, anything else the service's own; ``admin.*`` calls exit 0 and
frame their reply as ``0\\0`` (ok), ``2\\0<type>\\0...`` (qubesd error) or
nothing (qubesd refused).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

from sysmon.collector.runner import ProcessResult, run_bounded
from sysmon.names import is_valid_qube_name, is_valid_uuid

EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127
EXIT_QREXEC_FAILED = 125

METRICS_SERVICE = "qubes.Metrics.Get"
_ARGUMENT_RE = re.compile(r"[A-Za-z0-9_.-]{0,64}")
_ERROR_TYPE_RE = re.compile(rb"[A-Za-z0-9_.]{1,100}")


class CallOutcome(enum.Enum):
    """What a qrexec call's exit status means."""

    OK = "ok"
    REFUSED = "refused"
    NO_SERVICE = "no-service"
    QREXEC_FAILED = "qrexec-failed"
    SERVICE_FAILED = "service-failed"


def classify_exit(returncode: int) -> CallOutcome:
    """Map ``qrexec-client-vm``'s exit status to its meaning."""
    if returncode == 0:
        return CallOutcome.OK
    if returncode == EXIT_REFUSED:
        return CallOutcome.REFUSED
    if returncode == EXIT_NO_SERVICE:
        return CallOutcome.NO_SERVICE
    if returncode == EXIT_QREXEC_FAILED:
        return CallOutcome.QREXEC_FAILED
    return CallOutcome.SERVICE_FAILED


class AdminCallError(Exception):
    """An ``admin.*`` call did not succeed; the message says why."""


def unframe_admin_reply_untrusted(raw: bytes) -> bytes:
    """Strip qubesd's ``0\\0`` frame, or raise for an error or a refusal.

    Raises:
        AdminCallError: qubesd refused (empty reply), reported an exception
            (``2\\0<type>\\0...``), or the reply is not framed at all.
    """
    if not raw:
        raise AdminCallError("qubesd refused the call (empty reply): check the admin policy")
    if raw.startswith(b"0\x00"):
        return raw[2:]
    if raw.startswith(b"2\x00"):
        exc_type = raw[2:].split(b"\x00", 1)[0]
        shown = exc_type.decode() if _ERROR_TYPE_RE.fullmatch(exc_type) else "unknown"
        raise AdminCallError(f"qubesd raised {shown}")
    raise AdminCallError("reply is not framed as qubesd replies are")


def safe_service_argument(argument: str) -> str:
    """Return ``argument`` if qrexec would pass it unchanged, else ``""``."""
    return argument if _ARGUMENT_RE.fullmatch(argument) else ""


class Transport(Protocol):
    """Something that can run a qube's metrics service and dom0's admin calls."""

    def metrics_argv(self, target: str, argument: str) -> list[str]:
        """The argv that runs ``qubes.Metrics.Get+argument`` in ``target``."""

    async def call(
        self, argv: Sequence[str], *, max_stdout: int, env: Mapping[str, str] | None = None
    ) -> ProcessResult:
        """Run ``argv`` bounded (no timeout: the caller owns it)."""


def _is_uuid_target(target: str) -> bool:
    prefix, _, uuid = target.partition(":")
    return prefix == "uuid" and is_valid_uuid(uuid)


@attrs.frozen
class Qrexec:
    """The real thing: ``qrexec-client-vm`` found on PATH."""

    client: str = "qrexec-client-vm"

    def service_argv(self, target: str, service: str, argument: str = "") -> list[str]:
        """Argv for ``SERVICE[+ARG]`` in ``target``; names are checked first.

        ``target`` is ``dom0``, a qube's name or, on Qubes 4.3, ``uuid:U``.
        """
        if not (target == "dom0" or is_valid_qube_name(target) or _is_uuid_target(target)):
            raise ValueError(f"not a qube name: {target!r}")
        argument = safe_service_argument(argument)
        ident = f"{service}+{argument}" if argument else service
        return [self.client, "--", target, ident]

    def metrics_argv(self, target: str, argument: str) -> list[str]:
        """The argv that runs ``qubes.Metrics.Get+argument`` in ``target``."""
        return self.service_argv(target, METRICS_SERVICE, argument)

    async def call(
        self, argv: Sequence[str], *, max_stdout: int, env: Mapping[str, str] | None = None
    ) -> ProcessResult:
        """Run ``argv`` bounded (no timeout: the caller owns it)."""
        return await run_bounded(argv, max_stdout=max_stdout, env=env)
