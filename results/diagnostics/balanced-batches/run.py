"""Class-balanced against random batches, in two regimes: the ProxyNCA++ half and the triplet half.

Run from the project root, `.venv/bin/python results/diagnostics/balanced-batches/run.py [HALF] [JOBS]`:
- HALF omitted: the ProxyNCA++ half (20 runs, 10 of them shared: the balanced runs are the configs of
  ../fast-proxies designs (b) and (c), so with that folder's runs in `build/runs` only the 10
  random-batch runs train, about 90 core-minutes). ProxyNCA++ at size 'converged' (20 epochs, 64 px,
  the multi-scale backbone, proxies 0.4), seeds 0 to 4, R@1 on the validation classes: on the embedded
  set at the converged preset's backbone rate (4e-2), and on 'embedded-many' at the backbone rate
  design (c) chose there (run ../fast-proxies/run_many.py first). Into proxynca++/.
- `triplet-search`: the triplet loss's rate on 'embedded-many' (README, fourth amendment): balanced and
  random batches at each of TRIPLET_MANY_RATES, seed 0 (6 runs), into triplet/search/.
- `triplet`: the triplet half, balanced against random batches, seeds 0 to 4, at size 'converged'
  (triplet: lr 1, 39 epochs, 56 px, from results/tuning/curves-converged) on the embedded set, and on
  'embedded-many' at the rate the search chose (16 more runs; seed 0 there is the search's). Into triplet/.
Each writes runs.csv, ablation.md/csv and grid.json; an interrupted run resumes from its runs.csv.
"""
import importlib.util
import sys
from pathlib import Path

import pandas as pd

from pnca_utils.config import CALIBRATED_CONVERGED
from pnca_utils.experiments.ablation import Variant, best_rate, run_grid, write_summary

HERE = Path(__file__).resolve().parent
OUT = HERE / "proxynca++"
TRIPLET_OUT = HERE / "triplet"
TRIPLET_SEARCH = TRIPLET_OUT / "search"
TRIPLET_MANY_RATES = (1e-1, 3e-1, 1.0)  # fourth amendment: the triplet rate searched on 'embedded-many'
# the triplet's converged set-up (curves-converged), which size 'converged' gives the embedded set only
TRIPLET_SETUP = {k: CALIBRATED_CONVERGED[("embedded", "triplet")][k] for k in ("epochs", "image_size")}
FEW_BALANCED, MANY_BALANCED = "100 classes, balanced", "1,100 classes, balanced"


def many_class_rate() -> float:
    """The backbone rate design (c) of ../fast-proxies chose on 'embedded-many' (its run_many.chosen_rate)."""
    spec = importlib.util.spec_from_file_location("run_many", HERE.parent / "fast-proxies" / "run_many.py")
    run_many = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_many)
    lr = run_many.chosen_rate(pd.read_csv(run_many.SEARCH / "runs.csv"))
    if lr is None:
        raise SystemExit("design (c) found 'embedded-many' untestable: no many-class half to run")
    return lr


def variants(many_lr: float) -> list[Variant]:
    many = dict(dataset="embedded-many", lr=many_lr, proxy_lr=0.4)  # (c)'s configs, so its balanced runs are shared
    return [
        Variant(FEW_BALANCED, "full", description="embedded set, 8 classes x 4 images per batch"),
        Variant("100 classes, random", "removal", removed=("class-balanced batches",), reference=FEW_BALANCED,
                description="embedded set, 32 images drawn at random"),
        Variant(MANY_BALANCED, "full", overrides=many, description="embedded-many, 8 classes x 4 images per batch"),
        Variant("1,100 classes, random", "removal", removed=("class-balanced batches",), reference=MANY_BALANCED,
                overrides=many, description="embedded-many, 32 images drawn at random"),
    ]


def balanced_pair(regime: str, overrides: dict, preset: str = "triplet") -> list[Variant]:
    """`preset` with balanced batches (8 classes x 4 images) and with 32 images drawn at random."""
    balanced = f"{regime}, balanced"
    return [Variant(balanced, "full", preset=preset, overrides=overrides,
                    description=f"{regime}: 8 classes x 4 images per batch"),
            Variant(f"{regime}, random", "removal", preset=preset, removed=("class-balanced batches",),
                    reference=balanced, overrides=overrides, description=f"{regime}: 32 images drawn at random")]


def triplet_search_variants() -> list[Variant]:
    return [v for lr in TRIPLET_MANY_RATES
            for v in balanced_pair(f"1,100 classes at {lr:g}", dict(dataset="embedded-many", lr=lr, **TRIPLET_SETUP))]


def triplet_many_rate() -> float:
    """The fourth amendment's rule on the search: the rate whose pair has the highest mean R@1, if any
    run beats the untrained network by more than 2 points."""
    rate_of = {v.name: v.overrides["lr"] for v in triplet_search_variants()}
    untrained = pd.read_csv(TRIPLET_SEARCH / "untrained.csv")["R@1"].max()
    lr = best_rate(pd.read_csv(TRIPLET_SEARCH / "runs.csv"), rate_of, floor=untrained + 2)
    if lr is None:
        raise SystemExit("no triplet rate trains on 'embedded-many': its many-class regime is untestable")
    return lr


def triplet_variants(many_lr: float) -> list[Variant]:
    return [*balanced_pair("100 classes", {}),
            *balanced_pair("1,100 classes", dict(dataset="embedded-many", lr=many_lr, **TRIPLET_SETUP))]


def run(grid: list[Variant], seeds: int, out: Path, jobs: int) -> int:
    runs = run_grid(grid, "converged", seeds, out, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, grid, out)
    return 0


def main(half: str = "proxynca++", jobs: int = 2) -> int:
    if half == "proxynca++":
        return run(variants(many_class_rate()), 5, OUT, jobs)
    if half == "triplet-search":
        return run(triplet_search_variants(), 1, TRIPLET_SEARCH, jobs)
    if half == "triplet":
        return run(triplet_variants(triplet_many_rate()), 5, TRIPLET_OUT, jobs)
    raise SystemExit(f"unknown half {half!r}: proxynca++, triplet-search or triplet")


if __name__ == "__main__":
    args = sys.argv[1:]
    half = args.pop(0) if args and not args[0].isdigit() else "proxynca++"
    sys.exit(main(half, *map(int, args)))
