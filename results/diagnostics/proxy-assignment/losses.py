"""The third prediction: under exclusion at T = 1/9, does the share of negative losses grow in training?

Run from the project root after run.py: `.venv/bin/python results/diagnostics/proxy-assignment/losses.py`
(a few minutes; it trains nothing: the runs are reloaded from build/runs, or trained by run.py first).
For both T = 1/9 variants and every seed it embeds the training images (the 80 training classes the
runs learned from) with the untrained network (its seed's initial weights and proxies) and with the
trained one, and computes each image's excluded loss at T = 1/9. Writes `losses.csv` (share of images
below 0 and the mean, before and after) and `epochs.csv` (each run's per-epoch training loss and
embedding-gradient norm, from its history) beside this file.
"""
import json
import sys
from pathlib import Path

import pandas as pd

from pnca_utils import analysis
from pnca_utils.experiments.runs import cached_fit, is_finished
from pnca_utils.training import build, embed, prepare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HERE, VARIANTS  # noqa: E402

LOW_T = [v for v in VARIANTS if v.name.endswith("T = 1/9")]


def excluded_losses(model, proxies, train_data, temperature: float) -> pd.Series:
    emb, labels = embed(model, train_data.train)
    values = analysis.per_image_losses(emb, labels, proxies, temperature, positive_in_denominator=False)
    return pd.Series({"share below 0": float((values < 0).mean()), "mean": float(values.mean())})


def main() -> int:
    fixed = json.loads((HERE / "grid.json").read_text())["fixed"]  # the values run.py's grid trained with
    rows, epochs = [], []
    for variant in LOW_T:
        for seed in range(5):
            config = variant.config("converged", seed, **fixed)
            if not is_finished(config, "build/runs"):
                raise SystemExit(f"{variant.name}, seed {seed} is not in build/runs: run run.py first")
            train_data, _ = prepare(config)
            untrained = build(config, train_data.num_channels, train_data.num_train_classes)
            trained = cached_fit(config, root="build/runs", progress=False)
            for stage, (model, proxies) in (("untrained", untrained), ("trained", (trained.model, trained.proxies))):
                measured = excluded_losses(model, proxies, train_data, config.temperature)
                rows.append({"variant": variant.name, "seed": seed, "stage": stage, **measured})
            per_epoch = analysis.step_means_per_epoch(trained.history, ["loss", "grad_embeddings"]).reset_index()
            epochs.append(per_epoch.assign(variant=variant.name, seed=seed))
            print(rows[-2:], flush=True)
    pd.DataFrame(rows).to_csv(HERE / "losses.csv", index=False)
    pd.concat(epochs)[["variant", "seed", "epoch", "loss", "grad_embeddings"]].to_csv(HERE / "epochs.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
