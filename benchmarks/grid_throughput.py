"""Grid throughput: training runs per hour with 1, 2, ... local worker processes (`--jobs`).

The same small grid (ProxyNCA++ at one size, seeds 0..runs-1, one CPU thread per run, final
evaluation only) is trained through `pnca_utils.experiments.parallel.execute` once per worker count, with the
data set loaded once and shipped to the workers. Writes the wall time, runs per hour, the speed-up
over one worker and the ideal (the worker count) into a JSON file, and checks that every worker
count gave the same metrics for every run.

    python benchmarks/grid_throughput.py                              # 1 and 2 workers, size ci
    python benchmarks/grid_throughput.py --jobs 1 2 4 8 --size default --runs 8
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

from pnca_utils.config import make_config
from pnca_utils.data import load_data
from pnca_utils.experiments.parallel import Task, execute
from pnca_utils.experiments.provenance import record

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "grid_throughput.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    p.add_argument("--size", default="ci", help="size preset of every run (ci, default, full)")
    p.add_argument("--runs", type=int, default=4, help="runs per measurement (seeds 0..runs-1)")
    p.add_argument("--one-run-threads", type=int, default=2,
                   help="also time one worker whose runs use this many threads (how grids ran before --jobs; "
                        "0: skip). Its runs compute other numbers: a run's results depend on its thread count")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def measure(configs, data, jobs: int) -> tuple[float, dict]:
    """Wall seconds to train every config with `jobs` workers, and each run's metrics by seed."""
    metrics = {}
    started = time.perf_counter()
    failures = execute([Task(f"seed {c.seed}", c) for c in configs], None,
                       lambda task, outcome: metrics.__setitem__(task.config.seed, outcome["metrics"]),
                       jobs=jobs, data=data, progress=False)
    if failures:
        raise RuntimeError("; ".join(map(str, failures)))
    return time.perf_counter() - started, metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [make_config("proxynca++", args.size, seed=s, threads=1, eval_every=10**6) for s in range(args.runs)]
    data = load_data("embedded", image_size=configs[0].image_size)
    rows, reference = [], None
    for jobs in args.jobs:
        seconds, metrics = measure(configs, data, jobs)
        reference = reference or metrics
        rows.append({"jobs": jobs, "seconds": round(seconds, 1), "runs_per_hour": round(3600 * args.runs / seconds, 1),
                     "same_metrics_as_first": metrics == reference})
        print(f"{jobs} worker(s): {args.runs} runs in {seconds:.1f} s, {rows[-1]['runs_per_hour']} runs/h",
              flush=True)
    if args.one_run_threads:
        threaded = [make_config("proxynca++", args.size, seed=s, threads=args.one_run_threads, eval_every=10**6)
                    for s in range(args.runs)]
        seconds, _ = measure(threaded, data, 1)
        report_threaded = {"jobs": 1, "threads_per_run": args.one_run_threads, "seconds": round(seconds, 1),
                           "runs_per_hour": round(3600 * args.runs / seconds, 1)}
        print(f"1 worker, {args.one_run_threads} threads per run: {seconds:.1f} s", flush=True)
    for row in rows:
        row["speedup"] = round(rows[0]["seconds"] / row["seconds"] * rows[0]["jobs"], 2)
        row["ideal"] = row["jobs"]
    report = {"date": date.today().isoformat(), "size": args.size, "runs": args.runs, "preset": "proxynca++",
              "threads_per_run": 1, "measurements": rows,
              "one_worker_more_threads": report_threaded if args.one_run_threads else None, **record()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["same_metrics_as_first"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
