"""Exploratory, after the verdict on designs (a) and (b): how far did the proxies move?

Run from the project root after run.py: `.venv/bin/python results/diagnostics/fast-proxies/movement.py`
(under a minute; it trains nothing: the runs are reloaded from build/runs, or trained by run.py first).
For every variant and seed it rebuilds the run's initial proxies (its seed's draws, as `fit` makes
them) and compares them with the trained ones: the mean angle each proxy turned, the ratio of its
trained to its initial length, and the mean cosine of each trained proxy to its nearest other proxy.
Writes `movement.csv` beside this file.
"""
import json
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from pnca_utils.experiments.runs import cached_fit, is_finished
from pnca_utils.training import build, prepare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HERE, VARIANTS  # noqa: E402


def movement(start: torch.Tensor, end: torch.Tensor) -> dict:
    """How `end` (C, D) differs from `start`: mean turn in degrees, mean length ratio, mean nearest-other cosine."""
    cos_turn = (F.normalize(start, dim=1) * F.normalize(end, dim=1)).sum(1).clamp(-1, 1)
    unit = F.normalize(end, dim=1)
    between = unit @ unit.T - 2 * torch.eye(len(unit))  # the diagonal never wins the max below
    return {"turn (degrees)": float(torch.rad2deg(torch.acos(cos_turn)).mean()),
            "length ratio": float((end.norm(dim=1) / start.norm(dim=1)).mean()),
            "nearest other proxy (cosine)": float(between.max(dim=1).values.mean())}


def main() -> int:
    fixed = json.loads((HERE / "grid.json").read_text())["fixed"]  # the values run.py's grid trained with
    rows = []
    for variant in VARIANTS:
        for seed in range(5):
            config = variant.config("converged", seed, **fixed)
            if not is_finished(config, "build/runs"):
                raise SystemExit(f"{variant.name}, seed {seed} is not in build/runs: run run.py first")
            train_data, _ = prepare(config)
            _, initial = build(config, train_data.num_channels, train_data.num_train_classes)
            trained = cached_fit(config, root="build/runs", progress=False)
            rows.append({"variant": variant.name, "seed": seed, "proxy_lr": config.proxy_lr or config.lr,
                         "lr": config.lr, **movement(initial.detach(), trained.proxies.detach().cpu())})
            print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(HERE / "movement.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
