"""admin.vm.List: dom0's recorded replies (4.2 and 4.3), hostile ones, and the targets."""

from __future__ import annotations

import json

import pytest
from fakequbes.recordings import RECORDINGS, read, world
from fakequbes.world import qube_uuid
from hypothesis import given
from hypothesis import strategies as st

from sysmon.protocol.admin import (
    AdminCallError,
    QubeInfo,
    parse_vm_list_untrusted,
    parse_xid_untrusted,
    select_targets,
    unframe_admin_reply_untrusted,
)

RELEASES = ("4.2", "4.3")


def recorded_payload(release: str) -> bytes:
    return unframe_admin_reply_untrusted(read(f"admin.vm.List-{release}.bin"))


def expected_qubes(release: str) -> list[QubeInfo]:
    return [
        QubeInfo(name, klass, state, uuid=qube_uuid(name) if release == "4.3" else None)
        for name, (klass, state) in sorted(world(release).items(), key=lambda i: i[0] != "dom0")
    ]


class TestRecordedReplies:
    @pytest.mark.parametrize("release", RELEASES)
    def test_every_qube_of_the_recorded_world(self, release):
        """Every line dom0 sent is read, with the values the recording holds."""
        found = parse_vm_list_untrusted(recorded_payload(release))
        assert found.rejected == ()
        assert sorted(found.qubes, key=lambda q: q.name) == sorted(
            expected_qubes(release), key=lambda q: q.name
        )
        assert found.qubes[0].name == "dom0"

    def test_4_3_lists_uuids_and_dom0s_is_zero(self):
        """On 4.3 each qube is addressed by the UUID dom0 listed."""
        qubes = {q.name: q for q in parse_vm_list_untrusted(recorded_payload("4.3")).qubes}
        assert qubes["dom0"].uuid == "00000000-0000-0000-0000-000000000000"
        assert qubes["work"].address == "uuid:969b85a0-bb25-5674-be0f-148151e53f18"
        assert qubes["work-halted"].uuid == "7e3fa5e2-59eb-5a57-84e4-844b2eb07c10"

    def test_4_2_is_called_by_name(self):
        """4.2 has no UUIDs: the name is the target, as before."""
        qubes = {q.name: q for q in parse_vm_list_untrusted(recorded_payload("4.2")).qubes}
        assert qubes["work"].address == "work"

    @pytest.mark.parametrize("release", RELEASES)
    def test_cut_at_every_byte_keeps_only_whole_lines(self, release):
        """A reply cut anywhere gives exactly the qubes of its complete lines."""
        payload = recorded_payload(release)
        whole = parse_vm_list_untrusted(payload).qubes
        for cut in range(len(payload) + 1):
            part = payload[:cut]
            found = parse_vm_list_untrusted(part)
            complete = part.count(b"\n")
            assert found.qubes == whole[:complete], cut
            assert bool(found.rejected) == (not part.endswith(b"\n") and cut > 0), cut

    @pytest.mark.parametrize("release", RELEASES)
    def test_unframe_cut_at_every_byte(self, release):
        """The frame is either whole or refused with the one error type."""
        raw = read(f"admin.vm.List-{release}.bin")
        for cut in range(len(raw) + 1):
            try:
                payload = unframe_admin_reply_untrusted(raw[:cut])
            except AdminCallError:
                assert cut < 2, cut
            else:
                assert payload == raw[2:cut]


class TestFieldsByKey:
    def test_unknown_keys_are_ignored(self):
        """A field the next release adds costs nothing."""
        line = b"work class=AppVM state=Running uuid=" + qube_uuid("work").encode()
        found = parse_vm_list_untrusted(line + b" colour=red future_key=1\n")
        assert found.qubes == (QubeInfo("work", "AppVM", "Running", qube_uuid("work")),)

    def test_order_of_fields_does_not_matter(self):
        found = parse_vm_list_untrusted(b"work state=Running class=AppVM\n")
        assert found.qubes == (QubeInfo("work", "AppVM", "Running"),)

    @pytest.mark.parametrize(
        ("line", "reason"),
        [
            (b"work class=AppVM\n", "no state="),
            (b"work state=Running\n", "no class="),
            (b"work class=AppVM state=Running state=Halted\n", "state given twice"),
            (b"work class=AppVM state=Sleeping\n", "unknown state"),
            (b"work class=App-VM state=Running\n", "invalid class"),
            (b"work class=AppVM state=Running junk\n", "not NAME key=value"),
            (b"-work class=AppVM state=Running\n", "invalid qube name"),
            (b"w\xc3\xa9rk class=AppVM state=Running\n", "not ASCII"),
        ],
    )
    def test_a_bad_line_is_rejected_alone(self, line, reason):
        """The other lines are still used; the reason is given."""
        found = parse_vm_list_untrusted(b"dom0 class=AdminVM state=Running\n" + line)
        assert [q.name for q in found.qubes] == ["dom0"]
        (rejected,) = found.rejected
        assert rejected.startswith("line 2: ")
        assert reason in rejected

    def test_a_4_3_line_without_uuid_is_rejected(self):
        """Once dom0 sends UUIDs, a line without one cannot be trusted to name a qube."""
        payload = recorded_payload("4.3") + b"stranger class=AppVM state=Running\n"
        found = parse_vm_list_untrusted(payload)
        assert "stranger" not in {q.name for q in found.qubes}
        assert any("no uuid=" in r for r in found.rejected)

    @pytest.mark.parametrize(
        "uuid", ["969B85A0-BB25-5674-BE0F-148151E53F18", "969b85a0", "../../etc", ""]
    )
    def test_malformed_uuid_is_rejected(self, uuid):
        found = parse_vm_list_untrusted(f"work class=AppVM state=Running uuid={uuid}\n".encode())
        assert found.qubes == ()

    def test_a_uuid_listed_twice_names_one_qube(self):
        """Two names for one UUID: the second is refused, so a call reaches one qube."""
        uuid = qube_uuid("work")
        payload = (
            f"work class=AppVM state=Running uuid={uuid}\n"
            f"impostor class=AppVM state=Running uuid={uuid}\n"
        ).encode()
        found = parse_vm_list_untrusted(payload)
        assert [q.name for q in found.qubes] == ["work"]
        assert found.rejected == ("line 2: uuid listed twice",)


class TestNameRuleFollowsTheRelease:
    def test_dots_allowed_when_dom0_answers_as_4_3(self):
        uuid = qube_uuid("work.example")
        found = parse_vm_list_untrusted(
            f"work.example class=AppVM state=Running uuid={uuid}\n".encode()
        )
        assert [q.name for q in found.qubes] == ["work.example"]

    def test_dots_refused_when_dom0_answers_as_4_2(self):
        found = parse_vm_list_untrusted(b"work.example class=AppVM state=Running\n")
        assert found.qubes == ()
        assert found.rejected == ("line 1: invalid qube name",)

    @pytest.mark.parametrize("name", [".hidden", "..", "-flag", "=cmd", "a/b", "x" * 32, "w-dm"])
    def test_still_never_a_path_a_flag_or_a_formula(self, name):
        uuid = qube_uuid("x")
        found = parse_vm_list_untrusted(f"{name} class=AppVM state=Running uuid={uuid}\n".encode())
        assert found.qubes == ()


class TestUnusable:
    def test_lines_none_usable_is_unusable(self):
        """A format sysmon cannot read is a failure, not an empty system."""
        found = parse_vm_list_untrusted(b"dom0|AdminVM|Running\nwork|AppVM|Running\n")
        assert found.unusable
        assert found.lines == 2

    def test_empty_list_is_not_unusable(self):
        assert not parse_vm_list_untrusted(b"").unusable

    def test_some_usable_is_not_unusable(self):
        found = parse_vm_list_untrusted(b"dom0 class=AdminVM state=Running\nbad\n")
        assert not found.unusable


class TestHostileBytes:
    @given(st.binary(max_size=2000))
    def test_any_bytes_parse_without_raising(self, payload):
        """Never raises; every qube it returns passes the rules."""
        found = parse_vm_list_untrusted(payload)
        names = [q.name for q in found.qubes]
        assert len(names) == len(set(names))
        assert all(payload.count(q.name.encode()) for q in found.qubes)

    @given(st.binary(max_size=300))
    def test_unframe_raises_only_its_own_error(self, raw):
        try:
            payload = unframe_admin_reply_untrusted(raw)
        except AdminCallError as exc:
            message = str(exc)
            assert message, "the error says why"
        else:
            assert raw.startswith(b"0\x00")
            assert payload == raw[2:]

    @given(
        st.lists(
            st.tuples(
                st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
                st.sampled_from(["Running", "Halted", "Paused"]),
            ),
            max_size=20,
            unique_by=lambda t: t[0],
        )
    )
    def test_round_trip_4_3(self, qubes):
        """What qubesd of 4.3 writes is read back exactly."""
        qubes = [(n, s) for n, s in qubes if not n.endswith("-dm") and n not in {"none", "default"}]
        payload = b"".join(
            f"{n} class=AppVM state={s} uuid={qube_uuid(n)}\n".encode() for n, s in qubes
        )
        found = parse_vm_list_untrusted(payload)
        assert [(q.name, q.state, q.uuid) for q in found.qubes] == [
            (n, s, qube_uuid(n)) for n, s in qubes
        ]


class TestSelectTargets:
    def test_running_only_not_dom0_not_self_not_excluded(self):
        qubes = parse_vm_list_untrusted(recorded_payload("4.3")).qubes
        targets = select_targets(qubes, "sys-monitor", ["secrets-vault"])
        assert targets == ["disp1234", "nohandler", "sys-dns", "work"]


# --- admin.vm.property.Get+xid ---------------------------------------------


def xid_replies(release: str) -> dict[str, bytes]:
    """qubesd's recorded replies to sys-monitor's xid calls, by case."""
    entries = json.loads((RECORDINGS / f"admin.vm.property.Get-xid-{release}.json").read_text())
    return {e["case"]: bytes.fromhex(e["reply_hex"]) for e in entries}


class TestXid:
    @pytest.mark.parametrize("release", RELEASES)
    def test_recorded_ids_as_qubesd_sent_them(self, release):
        """4.3's ``type=int`` and 4.2's ``type=str`` give the same id; -1 is None."""
        replies = xid_replies(release)
        assert parse_xid_untrusted(replies["running AppVM (mock Xen id 3)"]) == 3
        assert parse_xid_untrusted(replies["paused AppVM (mock Xen id 5)"]) == 5
        assert parse_xid_untrusted(replies["running DispVM (mock Xen id 8)"]) == 8
        assert parse_xid_untrusted(replies["halted AppVM"]) is None

    @pytest.mark.parametrize("release", RELEASES)
    @pytest.mark.parametrize(
        "case",
        [
            "dom0 (AdminVM)",
            "a property that does not exist",
            "a qube that does not exist",
            "no argument",
        ],
    )
    def test_recorded_errors_raise_the_one_error(self, release, case):
        """dom0 has no xid property; qubesd's error frames never become an id."""
        with pytest.raises(AdminCallError):
            parse_xid_untrusted(xid_replies(release)[case])

    def test_the_framing_error_reply_is_refused(self):
        """An unknown qube reaches qubesd as ``keyword default``: 0 bytes."""
        (reply,) = [r for c, r in xid_replies("4.3").items() if "through qrexec" in c]
        with pytest.raises(AdminCallError, match="refused"):
            parse_xid_untrusted(reply)

    @pytest.mark.parametrize(
        "payload",
        [
            b"default=True type=int 0",  # dom0's id: never a qube's
            b"default=True type=int 32752",  # Xen's reserved ids
            b"default=True type=int 03",
            b"default=True type=int -2",
            b"default=True type=int 3\n",
            b"default=True type=bool 3",
            b"default=True type=int 3 4",
            b"default=True type=int ",
            b"default=True type=int \xd9\xa3",  # a non-ASCII digit
            b"default=True type=int " + b"9" * 60,
        ],
    )
    def test_hostile_or_odd_replies_are_refused(self, payload):
        with pytest.raises(AdminCallError):
            parse_xid_untrusted(b"0\x00" + payload)

    @given(st.binary(max_size=80))
    def test_any_bytes_give_an_id_in_range_or_the_one_error(self, raw):
        try:
            xid = parse_xid_untrusted(raw)
        except AdminCallError:
            return
        assert xid is None or 0 < xid < 0x7FF0

    def test_the_highest_id_xen_gives(self):
        assert parse_xid_untrusted(b"0\x00default=False type=int 32751") == 32751
