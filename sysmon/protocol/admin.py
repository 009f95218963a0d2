"""dom0's Admin API and qrexec's exit codes: pure, for hostile bytes.

``qrexec-client-vm`` exit codes follow qubes-core-qrexec 4.2 and 4.3
(``agent/qrexec-client-vm.c``, ``libqrexec/qrexec.h``; recorded in
``tests/fixtures/qubes/qrexec-client-vm*.json``): 126 refused, 127 no such
service in the target, 125 another qrexec failure, anything else the
service's own; ``admin.*`` calls exit 0 and frame their reply as ``0\\0``
(ok), ``2\\0<type>\\0...`` (qubesd error) or nothing (qubesd refused).

Which qubes exist and which to poll: ``admin.vm.List`` from dom0.

The reply is one line per qube after qubesd's ``0\\0`` frame: the name, then
``key=value`` fields.  Qubes 4.2 sends ``NAME class=C state=S``
(core-admin release4.2 ``qubes/api/admin.py``); 4.3 adds ``uuid=U``
(release4.3, commit 8039442a).  Fields are read by key: an unknown key is
ignored, so the next release's additions cost nothing; the keys sysmon uses
keep their strict rules.  A line is used only when the name passes Qubes'
own rule for the release that answered (dots are allowed when the reply
carries UUIDs, that is 4.3 or later), the class and state are known words and
the UUID, when sent, is well formed; any other line is rejected alone, with
a reason the caller logs.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

import attrs

from sysmon.protocol.names import is_valid_qube_name, is_valid_uuid

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


MAX_LIST_BYTES = 1024 * 1024
MAX_QUBES = 10_000
MAX_FIELDS = 32
#: qubes/vm/qubesvm.py get_power_state; "NA" is what clients show when the
#: state could not be read.
STATES = frozenset(
    {"Halted", "Transient", "Running", "Paused", "Suspended", "Halting", "Dying", "Crashed", "NA"}
)
_CLASS_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")
_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class DiscoveryError(Exception):
    """The list of qubes could not be had; the message says why, in one line."""


@attrs.frozen
class QubeInfo:
    """One qube as dom0 listed it; ``uuid`` only from Qubes 4.3 on."""

    name: str
    klass: str
    state: str
    uuid: str | None = None

    @property
    def address(self) -> str:
        """The qrexec target for this qube: ``uuid:U`` when dom0 gave one.

        A UUID names one qube for its whole life, so a qube renamed, or
        removed and re-created under the same name between discovery and
        poll, cannot be mistaken for another (the 4.3 policy engine accepts
        ``uuid:`` targets with the same rules as names).
        """
        return f"uuid:{self.uuid}" if self.uuid else self.name


@attrs.frozen
class Discovery:
    """The qubes dom0 listed, the lines that were rejected, and how many lines came."""

    qubes: tuple[QubeInfo, ...]
    rejected: tuple[str, ...] = ()
    lines: int = 0

    @property
    def unusable(self) -> bool:
        """dom0 sent lines and none of them could be used: a failure, not "no qubes"."""
        return self.lines > 0 and not self.qubes


def _fields(line: str) -> tuple[str, dict[str, str]] | str:
    """The name and the fields of one line, or why the line is refused."""
    name, *tokens = line.split(" ")
    if len(tokens) > MAX_FIELDS:
        return "too many fields"
    fields: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not _KEY_RE.fullmatch(key):
            return "not NAME key=value ..."
        if key in fields:
            return f"{key} given twice"
        fields[key] = value
    return name, fields


def parse_vm_list_untrusted(payload: bytes) -> Discovery:
    """Parse the unframed ``admin.vm.List`` payload, line by line.

    Never raises: every line it cannot use is in ``rejected`` with a reason.
    """
    *complete, tail = payload.split(b"\n")
    rejected: list[str] = []
    if len(complete) > MAX_QUBES:
        rejected.append(f"{len(complete) - MAX_QUBES} lines past the cap of {MAX_QUBES} dropped")
        complete = complete[:MAX_QUBES]
    if tail:
        # qubesd ends every line with a newline: this one was cut short.
        rejected.append(f"line {len(complete) + 1}: cut short (no newline)")
    parsed: list[tuple[int, tuple[str, dict[str, str]] | str]] = []
    for number, raw in enumerate(complete, start=1):
        if not raw:
            continue
        try:
            parsed.append((number, _fields(raw.decode("ascii"))))
        except UnicodeDecodeError:
            parsed.append((number, "not ASCII"))
    # dom0 sends UUIDs from 4.3 on; then every line must carry one, and
    # names follow 4.3's rule.
    with_uuids = any(isinstance(p, tuple) and "uuid" in p[1] for _, p in parsed)
    qubes: list[QubeInfo] = []
    seen: set[str] = set()
    for number, line in parsed:
        reason = line if isinstance(line, str) else _check(line, with_uuids, seen)
        if reason:
            rejected.append(f"line {number}: {reason}")
            continue
        assert not isinstance(line, str)  # noqa: S101 -- _check passed
        name, fields = line
        uuid = fields.get("uuid")
        seen.update({name, f"uuid:{uuid}"} if uuid else {name})
        qubes.append(QubeInfo(name=name, klass=fields["class"], state=fields["state"], uuid=uuid))
    return Discovery(qubes=tuple(qubes), rejected=tuple(rejected), lines=len(parsed))


def _check(line: tuple[str, dict[str, str]], with_uuids: bool, seen: set[str]) -> str:
    """Why a parsed line cannot be used, or "" when it can."""
    name, fields = line
    if not (name == "dom0" or is_valid_qube_name(name, dots=with_uuids)):
        return "invalid qube name"
    for key in ("class", "state", *(("uuid",) if with_uuids else ())):
        if key not in fields:
            return f"no {key}="
    if not _CLASS_RE.fullmatch(fields["class"]):
        return "invalid class"
    if fields["state"] not in STATES:
        return "unknown state"
    if with_uuids and not is_valid_uuid(fields["uuid"]):
        return "invalid uuid"
    if name in seen:
        return f"{name} listed twice"
    if with_uuids and f"uuid:{fields['uuid']}" in seen:
        return "uuid listed twice"
    return ""


def select_targets(
    qubes: Iterable[QubeInfo],
    self_name: str | None,
    exclude: Iterable[str],
    *,
    self_uuid: str | None = None,
) -> list[str]:
    """The qubes to poll: Running, not dom0, not ourselves, not excluded.

    Ourselves by name and by UUID: 4.3's policy engine refuses a call to
    ``sys-monitor`` from sys-monitor but not one to ``uuid:<sys-monitor>``
    (its loopback guard compares strings), and a qube is polled by UUID.
    """
    skip = {"dom0", *exclude}
    if self_name:
        skip.add(self_name)
    return [
        q.name
        for q in qubes
        if q.state == "Running"
        and q.name not in skip
        and not (self_uuid is not None and q.uuid == self_uuid)
    ]


# --- A qube's Xen domain id: admin.vm.property.Get+xid -----------------------

XID_SERVICE = "admin.vm.property.Get+xid"
#: Xen's first reserved domain id (DOMID_FIRST_RESERVED, xen/include/public/xen.h):
#: every real domain's id is below it.
XID_LIMIT = 0x7FF0
MAX_XID_REPLY = 64
#: qubesd's property reply (core-admin ``_serialize_property``): 4.3 says
#: ``type=int`` (a3aa53ba annotated ``QubesVM.xid``), 4.2 ``type=str``; -1
#: for a qube that is not running (recorded in
#: tests/fixtures/qubes/admin.vm.property.Get-xid-4.*.json).
_XID_REPLY_RE = re.compile(rb"default=(?:True|False) type=(?:int|str) (-1|[1-9][0-9]{0,4})")


def parse_xid_untrusted(raw: bytes) -> int | None:
    """A qube's Xen domain id from qubesd's framed reply; None when it is not running.

    dom0 has no ``xid`` property (qubesd raises QubesNoSuchPropertyError):
    its id is 0 and never asked.  0 is refused here, so a reply cannot
    pass a qube off as dom0.

    Raises:
        AdminCallError: refused, an error frame, or anything but one id.
    """
    if len(raw) > MAX_XID_REPLY:
        raise AdminCallError(f"xid reply longer than {MAX_XID_REPLY} bytes")
    match = _XID_REPLY_RE.fullmatch(unframe_admin_reply_untrusted(raw))
    if match is None:
        raise AdminCallError("xid reply is not one domain id")
    xid = int(match.group(1))
    if xid == -1:
        return None
    if xid >= XID_LIMIT:
        raise AdminCallError("xid reply is past Xen's domain ids")
    return xid
