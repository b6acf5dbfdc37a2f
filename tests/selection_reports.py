"""Comparing two selection.json reports: what must agree when the same selection runs twice (one process
against several, a local run against its Hub revisions), leaving out what differs between runs by design."""

import pytest


def comparable(report: dict) -> dict:
    """A selection.json without what differs between runs by design: timings, the processes, the device."""
    extra = {k: v for k, v in report["extra"].items() if k not in ("timing_s", "processes", "device")}
    return {**report, "extra": extra}


def assert_same_report(one: dict, two: dict) -> None:
    """The two reports choose the same snapshots with the same scores (to 1e-6) and agree on everything else."""
    assert two["selected"] == one["selected"]
    assert [s["name"] for s in two["scores"]] == [s["name"] for s in one["scores"]]
    for a, b in zip(one["scores"], two["scores"]):
        for key in ("i_xf", "i_yf", "i_xp", "i_yp", "j", "accuracy"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["name"], key)
    drop = ("scores", "ensemble")
    assert {k: v for k, v in comparable(two).items() if k not in drop} == \
        {k: v for k, v in comparable(one).items() if k not in drop}
    assert two["ensemble"]["members"] == one["ensemble"]["members"]
