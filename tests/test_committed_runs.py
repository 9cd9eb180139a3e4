"""Committed results are reproducible: a run of a committed search, drawn at random, trains again here to
the R@1 its search.csv records."""
import json
import random
from pathlib import Path

import pandas as pd
import pytest

from pnca_utils.config import Config
from pnca_utils.training import fit

ROOT = Path(__file__).resolve().parents[1]
# size default, 4 epochs, one CPU thread per run (so its numbers do not depend on the machine's cores):
# about a minute each
SEARCHES = ("proxynca", "nca")
# One validation image is 0.125 points of R@1. The machine that wrote the runs reproduces them exactly; the
# tolerance leaves room for a CPU whose kernels round differently (4 images of 800).
TOLERANCE = 0.5


def committed_runs() -> list[tuple[str, dict, float]]:
    rows = []
    for name in SEARCHES:
        for run in pd.read_csv(ROOT / "results" / "tuning" / name / "search.csv").to_dict("records"):
            config = json.loads(run["key"])
            if config.get("threads") == 1:
                rows.append((name, config, run["R@1"]))
    return rows


def test_the_committed_searches_hold_reproducible_runs():
    assert len(committed_runs()) >= 10


def test_a_committed_run_drawn_at_random_trains_to_its_committed_recall():
    name, values, committed = random.choice(committed_runs())
    values["lr_milestones"] = tuple(values.get("lr_milestones") or ())
    config = Config(**values)
    print(f"results/tuning/{name}: lr {config.lr:g}, seed {config.seed}, committed R@1 {committed}")
    assert fit(config, progress=False).metrics["R@1"] == pytest.approx(committed, abs=TOLERANCE), values


def test_make_diagnostics_runs_every_diagnostic_script():
    """`make reproduce` regenerates every committed diagnostic: each script under results/diagnostics is a
    step of the Makefile's `diagnostics` target."""
    target = (ROOT / "Makefile").read_text().split("\ndiagnostics:")[1].split("\n\n")[0]
    scripts = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "results" / "diagnostics").rglob("*")
                     if path.suffix in (".py", ".sh"))
    assert len(scripts) >= 10 and [script for script in scripts if script not in target] == []
