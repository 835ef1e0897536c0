"""Rows that kill or hang their worker (pipeline/quarantine.py): after `--quarantine-after` deaths on a unit its
rows go one at a time, the row in hand at a death becomes an error row of that stage, every other row is
edited, exactly once; the count of deaths lives under the output prefix, so a new process (a new driver)
goes on from it."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections import Counter

import pytest

from pipeline.layout import OutputLayout
from pipeline.quarantine import QuarantineSettings, UnitGuard, UnitGuardSettings
from pipeline.rows import PENDING
from tests.badinputs import good_jpeg, raw_tar


def _rows(n: int) -> list[dict]:
    return [{"key": f"k{i}", "status": PENDING} for i in range(n)]


def _die_in_guard(output: str, unit: str, die_at: str | None) -> None:
    """A worker process that starts the unit and is SIGKILLed: in its one batch, or at row `die_at`."""
    settings = UnitGuardSettings(output, {}, deaths_allowed=2, deadline_s=0)
    with UnitGuard(settings, "edit", unit) as guard:
        for batch in guard.batches(_rows(4)):
            if die_at is None or batch[0]["key"] == die_at:
                os.kill(os.getpid(), signal.SIGKILL)


def _death(output: str, unit: str, die_at: str | None = None) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=_die_in_guard, args=(output, unit, die_at))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL


def test_deaths_are_counted_in_the_store_and_the_row_in_hand_at_a_quarantined_death_fails(tmp_path):
    output, unit = str(tmp_path), "shard-abc-0"
    settings = UnitGuardSettings(output, {}, deaths_allowed=2, deadline_s=0)
    record = tmp_path / OutputLayout().attempt("edit", unit)
    _death(output, unit)  # two deaths with the whole unit in hand, each in a process of its own
    _death(output, unit)
    assert json.loads(record.read_text())["starts"] == 2
    _death(output, unit, die_at="k2")  # quarantined now: one row at a time, k2 in hand when it dies
    assert json.loads(record.read_text()) == {"starts": 3, "in_hand": {"k2": 1}}

    rows, seen = _rows(4), []
    with UnitGuard(settings, "edit", unit) as guard:
        assert guard.deaths == 3 and guard.quarantined
        for batch in guard.batches(rows):
            seen += [s["key"] for s in batch]
    assert seen == ["k0", "k1", "k3"]  # one at a time, the killer left out
    assert rows[2]["status"] == "error" and rows[2]["error_stage"] == "edit"
    assert rows[2]["error"].startswith("the worker died processing this row 3 times")  # 2 with the unit, 1 alone
    assert not record.exists()  # a finished unit forgets its deaths

    # a unit that never died: all its pending rows in one batch, and no record left behind
    rows = _rows(3)
    rows[1]["status"] = "error"
    with UnitGuard(settings, "edit", "other") as guard:
        assert [[s["key"] for s in b] for b in guard.batches(rows)] == [["k0", "k2"]]
    assert not (tmp_path / "attempts" / "edit" / "other.json").exists()


def test_quarantine_settings_are_checked_and_the_auto_deadline_scales_with_rows_and_steps():
    with pytest.raises(ValueError, match="--quarantine-after 0: must be at least 1"):
        QuarantineSettings(deaths_allowed=0)
    with pytest.raises(ValueError, match="--unit-timeout -1: must be positive"):
        QuarantineSettings(unit_timeout_s=-1)
    auto = QuarantineSettings()
    assert auto.deadline_s(64, 20) == 900 + 3 * 64 and auto.deadline_s(64, 40) == 900 + 6 * 64
    assert QuarantineSettings(unit_timeout_s=30).deadline_s(64, 20) == 30


ROWS, UNIT_ROWS = 12, 4
# one killer row in each stage, in different units and rows; one row that hangs the edit actor
FAULTS = {"decode": "p00", "write": "p02", "express": "p05", "edit": "p09"}
HANG = "p10"


@pytest.mark.slow
def test_a_row_that_kills_or_hangs_its_worker_ends_as_its_own_error_row_and_the_rest_once(
    tmp_path, ray_local, monkeypatch
):
    from pipeline.config import EditConfig
    from pipeline.ledger import load_state, read_ledger
    from pipeline.run import run_edit
    from pipeline.storage import Store

    members = []
    for i in range(ROWS):
        members += [(f"p{i:02d}.jpg", good_jpeg(seed=i)), (f"p{i:02d}.txt", b"make it brighter")]
    (tmp_path / "in.tar").write_bytes(raw_tar(members))
    spec = ";".join(f"{stage}.crash={key}" for stage, key in FAULTS.items()) + f";edit.hang={HANG}"
    monkeypatch.setenv("MGIE_BATCH_FAULTS", spec)
    cfg = EditConfig.of(
        input=str(tmp_path / "in.tar"),
        output=str(tmp_path / "out"),
        unit_rows=UNIT_ROWS,
        resources="cpu",
        progress=False,
        # one death on a unit and its rows go one at a time; a hang is a death after 25 s
        quarantine=QuarantineSettings(deaths_allowed=1, unit_timeout_s=25),
    )
    summary = run_edit(cfg)
    assert summary["read"] == ROWS and summary["error"] == len(FAULTS) + 1 and summary["ok"] == ROWS - 5

    ledger = read_ledger(str(tmp_path / "out")).to_pylist()
    assert Counter(r["row_index"] for r in ledger) == Counter(range(ROWS))  # every row once
    errors = {r["key"]: (r["error_stage"], r["error"]) for r in ledger if r["status"] == "error"}
    expected = {key: stage for stage, key in FAULTS.items()} | {HANG: "edit"}
    assert {k: stage for k, (stage, _) in errors.items()} == expected
    for _, error in errors.values():
        # one death with the unit in hand, one with the row alone
        assert error.startswith("the worker died processing this row 2 times"), error
    state = load_state(Store.open(str(tmp_path / "out")))
    assert state.orphans == [] and len(state.commits) == ROWS // UNIT_ROWS
    assert not list((tmp_path / "out").glob("attempts/*/*.json"))  # every stage finished its units

    again = run_edit(cfg)  # the same command: nothing left to do, nothing changes
    assert again["skipped"] == ROWS and again["ok"] == again["error"] == 0
    assert read_ledger(str(tmp_path / "out")).to_pylist() == ledger
