"""Each qube's Xen domain id, through the fake qrexec-client-vm answering as qubesd did."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fakequbes.world import calls, make_world, qube_uuid, requested_calls, write_xid

from sysmon.collect.xids import MAX_TRIES, Xids
from sysmon.protocol.admin import QubeInfo

#: Builds the fake world: (xids, states, release) -> its folder.
World = Callable[..., Path]


def listed(states: dict[str, str], *, uuids: dict[str, str] | None = None) -> list[QubeInfo]:
    return [
        QubeInfo(name, "AppVM", state, uuid=(uuids or {}).get(name))
        for name, state in states.items()
    ]


@pytest.fixture(name="world")
def _world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    root = tmp_path / "world"

    def build(xids: dict[str, int], states: dict[str, str], release: str = "4.3") -> Path:
        env = make_world(root, {}, states=states, xids=xids, release=release)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return root

    return build


def xid_calls(root: Path) -> list[str]:
    return [c for c in calls(root) if "property.Get" in c]


@pytest.mark.parametrize("release", ["4.2", "4.3"])
async def test_ids_are_asked_once_per_start(world: World, release: str) -> None:
    states = {"work": "Running", "sys-net": "Running", "personal": "Paused", "old": "Halted"}
    root = world({"work": 3, "sys-net": 4, "personal": 5}, states, release=release)
    xids = Xids(timeout=30)
    qubes = listed({"dom0": "Running", **states})
    assert await xids.refresh(qubes) == {3: "work", 4: "sys-net", 5: "personal"}
    assert await xids.refresh(qubes) == {3: "work", 4: "sys-net", 5: "personal"}
    # dom0 (id 0, no such property) and a halted qube are never asked.
    assert sorted(xid_calls(root)) == [
        "personal admin.vm.property.Get+xid",
        "sys-net admin.vm.property.Get+xid",
        "work admin.vm.property.Get+xid",
    ]


async def test_a_restarted_qube_is_asked_again_and_its_old_id_is_nobodys(world: World) -> None:
    root = world({"work": 3, "sys-net": 4}, {"work": "Running", "sys-net": "Running"})
    xids = Xids(timeout=30)
    running = listed({"work": "Running", "sys-net": "Running"})
    assert await xids.refresh(running, cpu_time_ms={"work": 5000}) == {3: "work", 4: "sys-net"}
    # Halted between two lists: forgotten.
    assert await xids.refresh(listed({"work": "Halted", "sys-net": "Running"})) == {4: "sys-net"}
    write_xid(root, "work", 9)
    assert await xids.refresh(running, cpu_time_ms={"work": 10}) == {9: "work", 4: "sys-net"}
    # Restarted within one tick: only Xen's CPU time going back tells.
    write_xid(root, "work", 12)
    assert await xids.refresh(running, cpu_time_ms={"work": 20}) == {9: "work", 4: "sys-net"}
    assert await xids.refresh(running, cpu_time_ms={"work": 3}) == {12: "work", 4: "sys-net"}


async def test_a_new_uuid_under_the_same_name_is_a_new_qube(world: World) -> None:
    root = world({"work": 3}, {"work": "Running"})
    xids = Xids(timeout=30)
    first = listed({"work": "Running"}, uuids={"work": qube_uuid("work")})
    assert await xids.refresh(first) == {3: "work"}
    # Removed and created again under the same name: a new UUID, a new id.
    second_uuid = qube_uuid("work-again")
    (root / "uuid" / second_uuid).write_text("work\n")
    write_xid(root, "work", 7)
    second = listed({"work": "Running"}, uuids={"work": second_uuid})
    assert await xids.refresh(second) == {7: "work"}
    assert xid_calls(root)[-1] == "work admin.vm.property.Get+xid"
    assert requested_calls(root)[-1] == f"uuid:{second_uuid} admin.vm.property.Get+xid"


async def test_the_vault_is_never_asked_and_a_refusal_is_retried_a_few_times(world: World) -> None:
    root = world({"work": 3, "secrets-vault": 6}, {"work": "Running", "secrets-vault": "Running"})
    xids = Xids(timeout=30)
    qubes = listed({"work": "Running", "secrets-vault": "Running", "vault2": "Running"})
    for _ in range(MAX_TRIES + 3):
        assert await xids.refresh(qubes, skip=["secrets-vault"]) == {3: "work"}
    asked = xid_calls(root)
    assert "secrets-vault admin.vm.property.Get+xid" not in asked
    # vault2 is unknown to dom0: 0 bytes each time, asked MAX_TRIES times per start.
    assert asked.count("vault2 admin.vm.property.Get+xid") == MAX_TRIES


async def test_an_id_claimed_by_two_qubes_maps_neither(world: World) -> None:
    world({"work": 3, "other": 3}, {"work": "Running", "other": "Running"})
    xids = Xids(timeout=30)
    assert await xids.refresh(listed({"work": "Running", "other": "Running"})) == {}


async def test_calls_a_tick_are_bounded(world: World) -> None:
    states = {f"q{i}": "Running" for i in range(10)}
    root = world({}, states)
    xids = Xids(timeout=30, max_calls=4)
    assert len(await xids.refresh(listed(states))) == 4
    assert len(xid_calls(root)) == 4
    assert len(await xids.refresh(listed(states))) == 8
