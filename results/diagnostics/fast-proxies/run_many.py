"""Fast proxies in the many-class regime: design (c), as amended on 2026-12-05 (README).

Run from the project root, in this order:
- `.venv/bin/python results/diagnostics/fast-proxies/run_many.py search [JOBS]`: the backbone-rate
  search on this set, the pair at backbone 4e-3, 1e-2 and 4e-2, seed 0 (6 runs of 10 to 13 min at one
  thread), into many-class/search/;
- `.venv/bin/python results/diagnostics/fast-proxies/run_many.py [JOBS]`: the pair at the rate the
  search's rule chose (`chosen_rate`), seeds 0 to 4 (seed 0 is reloaded from the search's runs in
  build/runs; 8 more runs), into many-class/.
The pair is ProxyNCA++ with proxies at 0.4 against proxies at the backbone's rate, on 'embedded-many'
(1,100 training classes of 5 images; 880 to train on, 220 held out for validation), size 'converged'
(20 epochs, 64 px, the multi-scale backbone), R@1 on the validation classes. An interrupted run
resumes from its runs.csv.
"""
import sys
from pathlib import Path

import pandas as pd

from pnca_utils.config import ConfigError
from pnca_utils.experiments.ablation import Variant, best_rate, run_grid, write_summary

HERE = Path(__file__).resolve().parent
OUT = HERE / "many-class"
SEARCH = OUT / "search"
SEARCH_RATES = (4e-3, 1e-2, 4e-2)  # the amendment of 2026-12-05: backbone rates searched on this set
PROXY_LR = 0.4  # the converged preset's proxy rate on the embedded set
UNTRAINED_R1 = 3.6  # the untrained network on these 220 validation classes (README)


def pair(lr: float) -> list[Variant]:
    """ProxyNCA++ on 'embedded-many' at backbone rate `lr`: proxies at 0.4, and proxies at `lr`."""
    fast = f"backbone {lr:g}, proxies {PROXY_LR:g}"
    overrides = dict(dataset="embedded-many", lr=lr, proxy_lr=PROXY_LR)
    return [Variant(fast, "full", overrides=overrides, description=f"(c) backbone {lr:g}, proxies {PROXY_LR:g}"),
            Variant(f"backbone {lr:g}, proxies {lr:g}", "removal", removed=("fast proxies",), reference=fast,
                    overrides=overrides, description=f"(c) backbone {lr:g}, proxies at the backbone's rate")]


def search_variants() -> list[Variant]:
    return [v for lr in SEARCH_RATES for v in pair(lr)]


def chosen_rate(search_runs: pd.DataFrame) -> float | None:
    """The amendment's rule: the backbone rate whose pair has the highest mean R@1 (favouring neither
    variant); None when no run lifts R@1 more than 2 points above the untrained network (untestable)."""
    names = {v.name: lr for lr in SEARCH_RATES for v in pair(lr)}
    try:
        return best_rate(search_runs, names, floor=UNTRAINED_R1 + 2)
    except ConfigError as error:
        raise SystemExit(f"{error}: run `run_many.py search` first")


def search(jobs: int = 2) -> int:
    runs = run_grid(search_variants(), "converged", 1, SEARCH, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, search_variants(), SEARCH)
    return 0


def main(jobs: int = 2) -> int:
    lr = chosen_rate(pd.read_csv(SEARCH / "runs.csv"))
    if lr is None:
        print("no backbone rate lifts R@1 above the untrained network by 2 points: (c) is untestable here")
        return 0
    runs = run_grid(pair(lr), "converged", 5, OUT, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, pair(lr), OUT)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["search"]:
        sys.exit(search(*map(int, sys.argv[2:])))
    sys.exit(main(*map(int, sys.argv[1:])))
