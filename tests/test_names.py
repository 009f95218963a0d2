"""Qube names and UUIDs as qubesd accepts them, 4.2's rule and 4.3's."""

from __future__ import annotations

import pytest

from sysmon.protocol.names import (
    DISPOSABLES,
    DOM0_UUID,
    MAX_NAME_LENGTH,
    is_valid_qube_name,
    is_valid_uuid,
    looks_disposable,
    share_of,
)


def test_names_qubesd_accepts() -> None:
    for name in ("work", "sys-net", "disp1234", "a_b", "A" + "x" * (MAX_NAME_LENGTH - 1)):
        assert is_valid_qube_name(name), name
        assert is_valid_qube_name(name, dots=False), name


def test_names_it_refuses() -> None:
    refused = ("", "-rf", "1work", ".", "..", "=cmd", "a b", "a/b", "none", "default",
               "Domain-0", "work-dm", "x" * (MAX_NAME_LENGTH + 1), "wörk", "a\nb")  # fmt: skip
    for name in refused:
        assert not is_valid_qube_name(name), name


def test_dots_are_a_4_3_name_only() -> None:
    assert is_valid_qube_name("my.vm")
    assert not is_valid_qube_name("my.vm", dots=False)


def test_uuids_as_dom0_writes_them() -> None:
    assert is_valid_uuid(DOM0_UUID)
    assert is_valid_uuid("6f1b6f4e-4a4f-4d7e-9c39-3f0d2a1b7c55")
    for text in ("6F1B6F4E-4A4F-4D7E-9C39-3F0D2A1B7C55", "6f1b6f4e4a4f4d7e9c393f0d2a1b7c55", ""):
        assert not is_valid_uuid(text), text


@pytest.mark.parametrize(
    ("name", "disposable"),
    [
        ("disp1", True),
        ("disp9999", True),
        ("disp", False),
        ("disp-1", False),
        ("dispvm", False),
        ("disp1a", False),
        ("mydisp1", False),
        ("default-dvm", False),
    ],
)
def test_a_disposable_is_known_by_the_name_dom0_gives_it(name: str, disposable: bool) -> None:
    assert looks_disposable(name) is disposable


def test_disposables_share_one_name_for_their_caps() -> None:
    assert share_of("disp12") == share_of("disp7") == DISPOSABLES
    assert share_of("work") == "work"
    assert not is_valid_qube_name(DISPOSABLES)  # no qube can be named so
