"""Experiments: many runs, cached, in parallel, summarised (what `make tune` and `make reproduce` run).

| module | what it does |
|---|---|
| `runs` | the run cache: a run's folder named by its config, trained once, reloaded after |
| `parallel` | training many runs: in this process, local processes (`--jobs`) or a Dask cluster |
| `tuning` | validation searches on held-out training classes; epoch budgets from their curves |
| `ablation` | the seeded grids (ProxyNCA++'s components, the HDML comparison) and their paired intervals |
| `reproduction` | the full-scale runs on real data sets beside the paper's table |
| `provenance` | the commit, library versions and machine a result came from |
"""
