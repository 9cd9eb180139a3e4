"""Untrained network's R@1 at each image size, for the 48-px backbone (A) and the multi-scale one (B).

Run from the project root: `.venv/bin/python results/diagnostics/image-scale/run.py` (about 5 min on
2 cores, the multi-scale pretraining included). Writes untrained.csv (one row per backbone, size,
seed and split) and summary.md (means over the seeds) beside this file.
"""
import json
import sys
from pathlib import Path

import pandas as pd

from pnca_utils.config import make_config
from pnca_utils.data import load_data
from pnca_utils.experiments.provenance import record
from pnca_utils.training import untrained_metrics

HERE = Path(__file__).resolve().parent
BACKBONES = {"A: 48 px only": "auto", "B: 40-64 px": "auto-multiscale"}
SIZES, SEEDS, SPLITS = (32, 40, 48, 56, 64), (0, 1, 2), ("val", "test")


def main() -> int:
    rows = []
    for size in SIZES:
        data = load_data("embedded", image_size=size)
        for name, weights in BACKBONES.items():
            for split in SPLITS:
                for seed in SEEDS:
                    config = make_config("proxynca++", "default", image_size=size, weights=weights, seed=seed,
                                         eval_split=split, threads=1)
                    metrics = untrained_metrics(config, data)
                    rows.append({"backbone": name, "size": size, "split": split, "seed": seed,
                                 "R@1": metrics["R@1"], "NMI": metrics["NMI"]})
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(HERE / "untrained.csv", index=False)
    summary = table.groupby(["split", "backbone", "size"])["R@1"].mean().unstack("size").round(2)
    (HERE / "summary.md").write_text("Untrained network's R@1 (%), mean over embedding-layer seeds 0, 1, 2; "
                                     "val decides, test is a reference only.\n\n" + summary.to_markdown() + "\n")
    (HERE / "provenance.json").write_text(json.dumps(record(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
