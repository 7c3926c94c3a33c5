"""scripts/calibrate_margin.py's summary (the measurement itself needs the built model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("calibrate_margin",
                                                  REPO / "scripts" / "calibrate_margin.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_picks_the_smallest_margin_within_the_false_abstention_limit() -> None:
    summarise = _script().summarise
    rows = ([{"answerable": True, "margin": m} for m in (-2.0, -1.0, 0.7, 1.2)]
            + [{"answerable": True, "retrieval": True}]
            + [{"answerable": False, "margin": m} for m in (0.2, 1.1, 3.0, 4.2)])
    result = summarise(rows, max_false=0.25)
    by = {t["margin"]: t for t in result["table"]}
    assert by[0.0]["false_abstention"] == 3 / 5 and by[0.0]["unanswerable_abstained"] == 1.0
    assert by[1.5]["false_abstention"] == 1 / 5 and by[1.5]["unanswerable_abstained"] == 0.5
    assert result["suggested"] == 1.5  # 1.0 still abstains on 2 of 5 answerable
    assert 0.5 < result["auc"] <= 1.0
    assert summarise(rows, max_false=0.0)["suggested"] is None  # retrieval alone exceeds it
