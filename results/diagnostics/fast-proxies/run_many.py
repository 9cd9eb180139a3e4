"""Fast proxies in the many-class regime: design (c).

Run from the project root: `.venv/bin/python results/diagnostics/fast-proxies/run_many.py search [JOBS]`
(the backbone-rate search on this set, 6 runs, into many-class/search/), then
`.venv/bin/python results/diagnostics/fast-proxies/run_many.py [JOBS]`
(10 runs of about 6 to 7 min at one thread each: about 35 min with 2 jobs on 2 cores; an interrupted
run resumes from many-class/runs.csv). The pair of design (b), ProxyNCA++ at the calibrated rates
(backbone 4e-2, proxies 0.4) against proxies at the backbone's rate, on 'embedded-many' (1,100
training classes of 5 images; 880 to train on, 220 held out for validation), size 'converged'
(20 epochs, 64 px, the multi-scale backbone), seeds 0 to 4. Writes runs.csv, ablation.md/csv and
grid.json into many-class/ beside this file.
"""
import sys
from pathlib import Path

from pnca_utils.experiments.ablation import Variant, run_grid, write_summary

HERE = Path(__file__).resolve().parent
OUT = HERE / "many-class"
FAST = "many classes, proxies 0.4"
# the converged preset's validated values for the embedded set, stated here: 'embedded-many' has none of its own
CALIBRATED = dict(dataset="embedded-many", lr=4e-2, proxy_lr=0.4)
SEARCH_RATES = (4e-3, 1e-2, 4e-2)  # the amendment of 2026-12-05: backbone rates searched on this set
VARIANTS = [
    Variant(FAST, "full", overrides=CALIBRATED, description="(c) backbone 4e-2, proxies 0.4"),
    Variant("many classes, proxies 4e-2", "removal", removed=("fast proxies",), reference=FAST,
            overrides=CALIBRATED, description="(c) backbone 4e-2, proxies at the backbone's rate"),
]


def search_variants() -> list[Variant]:
    """The backbone-rate search of the amendment: the pair at backbone 4e-3, 1e-2 and 4e-2, seed 0."""
    variants = []
    for lr in SEARCH_RATES:
        fast = f"backbone {lr:g}, proxies 0.4"
        variants += [Variant(fast, "full", overrides={**CALIBRATED, "lr": lr}),
                     Variant(f"backbone {lr:g}, proxies {lr:g}", "removal", removed=("fast proxies",), reference=fast,
                             overrides={**CALIBRATED, "lr": lr})]
    return variants


def search(jobs: int = 2) -> int:
    """Seed 0 of the pair at each backbone rate of SEARCH_RATES, into many-class/search/."""
    runs = run_grid(search_variants(), "converged", 1, OUT / "search", "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, search_variants(), OUT / "search")
    return 0


def main(jobs: int = 2) -> int:
    runs = run_grid(VARIANTS, "converged", 5, OUT, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, VARIANTS, OUT)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["search"]:
        sys.exit(search(*map(int, sys.argv[2:])))
    sys.exit(main(*map(int, sys.argv[1:])))
