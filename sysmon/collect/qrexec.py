"""How sysmon reaches qubes and dom0: ``qrexec-client-vm`` and ``qubesdb-read``.

Every call goes through :mod:`sysmon.collect.process`; what the replies mean
is :mod:`sysmon.protocol.admin`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs
import trio

from sysmon.collect.process import ProcessResult, run_bounded
from sysmon.protocol.admin import (
    MAX_LIST_BYTES,
    METRICS_SERVICE,
    AdminCallError,
    CallOutcome,
    Discovery,
    DiscoveryError,
    classify_exit,
    parse_vm_list_untrusted,
    safe_service_argument,
    unframe_admin_reply_untrusted,
)
from sysmon.protocol.names import is_valid_qube_name, is_valid_uuid


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


class DiscoverySource(Protocol):
    """Where the list of qubes and our own name come from."""

    async def list_qubes(self) -> Discovery:
        """Every qube with its state.  Raises DiscoveryError."""

    async def own_name(self) -> str | None:
        """This qube's name, or None."""


@attrs.frozen
class QrexecDiscovery:
    """Discovery through dom0's Admin API and QubesDB, as in a real qube."""

    qrexec: Qrexec = attrs.field(factory=Qrexec)
    qubesdb_read: str = "qubesdb-read"

    async def list_qubes(self) -> Discovery:
        """Ask dom0 for every qube.  The caller owns the timeout.

        Raises:
            DiscoveryError: refused by policy or qubesd, qubesd error, no
                ``qrexec-client-vm``, or an unusable reply.
        """
        argv = self.qrexec.service_argv("dom0", "admin.vm.List")
        try:
            result = await self.qrexec.call(argv, max_stdout=MAX_LIST_BYTES)
        except OSError as exc:
            raise DiscoveryError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        if result.stdout_overflow:
            raise DiscoveryError(f"admin.vm.List replied more than {MAX_LIST_BYTES} bytes")
        outcome = classify_exit(result.returncode)
        if outcome is CallOutcome.REFUSED:
            raise DiscoveryError("admin.vm.List refused by qrexec policy (exit 126)")
        if outcome is not CallOutcome.OK:
            raise DiscoveryError(
                f"admin.vm.List failed: {outcome.value} (exit {result.returncode})"
            )
        try:
            payload = unframe_admin_reply_untrusted(result.stdout)
        except AdminCallError as exc:
            raise DiscoveryError(f"admin.vm.List: {exc}") from exc
        return parse_vm_list_untrusted(payload)

    async def own_name(self) -> str | None:
        """This qube's name from QubesDB, or None when it cannot be read."""
        try:
            with trio.move_on_after(5):
                result = await self.qrexec.call([self.qubesdb_read, "/name"], max_stdout=256)
                name = result.stdout.decode("ascii", errors="replace").strip()
                if result.returncode == 0 and is_valid_qube_name(name):
                    return name
        except OSError:
            pass
        return None
