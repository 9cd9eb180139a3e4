"""The seeded ablation grid of ProxyNCA++ (and the HDML comparison): variants, runs, aggregation.

A grid is a list of `Variant`s, each a method preset plus config changes. `run_grid` trains every
variant for every seed (runs are cached by config, and an interrupted grid resumes), writes
`runs.csv`; `summarize` turns it into mean ± std, 95 % intervals and paired differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .. import paper
from ..config import Config, ConfigError, make_config
from ..paths import results_dir
from .parallel import GRID_THREADS, RunsFailed, Task, execute, write_table
from .runs import run_key

RESULTS_DIR = results_dir() / "converged"  # the committed converged grid (size converged, 5 seeds)
PAPER_SMALL_IMAGES = {256: 227}  # the paper's larger images (256) against the usual 227-pixel crops
GRIDS = ("proxynca++", "hdml")
SUMMARY_METRICS = ("R@1", "R@2", "R@4", "R@8", "NMI", "MAP@R")


def smaller_image_size(image_size: int) -> int:
    """The 'image scale' component removed: 256 → 227 as in the paper; else 7/8 on a multiple of 8 (64 → 56).

    At size 'converged' both 64 and 56 px are scales the multi-scale backbone was pretrained at
    (results/diagnostics/image-scale), so the pair measures the scale, not a backbone fed a size it never saw.
    """
    if image_size in PAPER_SMALL_IMAGES:
        return PAPER_SMALL_IMAGES[image_size]
    return max(16, 8 * (image_size * 7 // 8 // 8))


@dataclass(frozen=True)
class Component:
    """One ProxyNCA++ enhancement and the config change that removes it."""

    name: str
    removed: str  # what the variant without it does instead

    def remove(self, config: Config) -> dict:
        return {
            "proxy assignment": {"positive_in_denominator": False},
            "low temperature": {"temperature": 1.0},
            "max pooling": {"pooling": "avg"},
            "fast proxies": {"proxy_lr": None},
            "class-balanced batches": {"sampler": "random"},
            "layernorm": {"layernorm": False},
            "image scale": {"image_size": smaller_image_size(config.image_size)},
        }[self.name]


# In the order of the cumulative path from ProxyNCA to ProxyNCA++.
COMPONENTS = (
    Component("proxy assignment", "positive proxy out of the denominator"),
    Component("low temperature", "temperature 1 instead of 1/9"),
    Component("max pooling", "average instead of max pooling"),
    Component("fast proxies", "proxies at the backbone's learning rate"),
    Component("class-balanced batches", "random instead of class-balanced batches"),
    Component("layernorm", "no LayerNorm before the embedding layer"),
    Component("image scale", "smaller images"),
)


@dataclass(frozen=True)
class Variant:
    """A row of the grid: a method preset with some ProxyNCA++ components removed."""

    name: str
    kind: str  # full | removal | baseline | path | method
    preset: str = "proxynca++"
    removed: tuple[str, ...] = ()
    reference: str | None = None  # the variant its paired Δ is taken against
    paper_delta: tuple[float, str] | None = None  # the paper's Δ R@1 against `reference`, and its source
    description: str = ""
    overrides: dict = field(default_factory=dict, hash=False)

    def config(self, size: str, seed: int, **fixed) -> Config:
        """The validated config of this variant for one seed."""
        base = make_config(self.preset, size, **{**fixed, **self.overrides, "seed": seed})
        changes = {}
        for component in COMPONENTS:
            if component.name in self.removed:
                changes.update(component.remove(base))
        return make_config(self.preset, size, **{**fixed, **self.overrides, **changes, "seed": seed})


def proxynca_grid() -> list[Variant]:
    """ProxyNCA++, each component removed alone, ProxyNCA (all removed) and the cumulative path."""
    full = "ProxyNCA++"
    names = [c.name for c in COMPONENTS]
    delta = paper.ABLATION_DELTA_R1
    variants = [Variant(full, "full", description="every enhancement")]
    for c in COMPONENTS:
        variants.append(Variant(f"− {c.name}", "removal", removed=(c.name,), reference=full,
                                paper_delta=delta.get(c.name), description=c.removed))
    # the baseline with its own validated settings (preset 'proxynca'), and, as the path's start, every
    # component removed from ProxyNCA++ at ProxyNCA++'s rates and budget
    variants.append(Variant("ProxyNCA", "baseline", preset="proxynca", reference=full,
                            paper_delta=delta["all"], description="the original, at its own validated rates"))
    for step in range(len(names)):
        variants.append(Variant(f"path {step}: + {names[step - 1]}" if step else "path 0: all removed", "path",
                                removed=tuple(names[step:]), reference=full,
                                description="ProxyNCA + " + ", ".join(names[:step]) if step
                                else "every component removed, at ProxyNCA++'s rates"))
    return variants


def hdml_grid(dataset: str = "embedded") -> list[Variant]:
    """Triplet and N-pair with and without hardness-aware synthesis, and ProxyNCA++ beside them."""
    source = dataset if any(d == dataset for d, _ in paper.HDML) else "cub"

    def paper_delta(method: str, base: str):
        ours, theirs = paper.HDML.get((source, method), {}), paper.HDML.get((source, base), {})
        if "R@1" in ours and "R@1" in theirs:
            return round(ours["R@1"] - theirs["R@1"], 1), f"HDML paper, {source}"
        return None

    return [Variant("Triplet", "method", preset="triplet"),
            Variant("HDML-Triplet", "method", preset="hdml-triplet", reference="Triplet",
                    paper_delta=paper_delta("hdml-triplet", "triplet")),
            Variant("N-pair", "method", preset="npair"),
            Variant("HDML-N-pair", "method", preset="hdml-npair", reference="N-pair",
                    paper_delta=paper_delta("hdml-npair", "npair")),
            Variant("ProxyNCA++", "method")]


def grid(name: str, dataset: str = "embedded") -> list[Variant]:
    """The variants of grid `name` (one of GRIDS)."""
    if name == "proxynca++":
        return proxynca_grid()
    if name == "hdml":
        return hdml_grid(dataset)
    raise ConfigError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}")


def select(variants: list[Variant], names: list[str] | None) -> list[Variant]:
    """The variants named in `names` (all when None), checked before any work starts."""
    if not names:
        return variants
    known = {v.name: v for v in variants}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(map(repr, known))}")
    return [known[n] for n in names]


def grid_fixed(variants: list[Variant], size: str, **fixed) -> dict:
    """The config values `run_grid` fixes for every run: `fixed`, plus GRID_THREADS CPU threads and only
    the final evaluation (every `eval_every` = the longest variant's epochs) unless `fixed` sets them."""
    fixed = {"threads": GRID_THREADS, **fixed}
    if "eval_every" not in fixed:  # only the final evaluation: the grid reports final metrics
        fixed["eval_every"] = max(v.config(size, 0, **fixed).epochs for v in variants)
    return fixed


def shared_rows(table: str | Path, names: dict[str, str], variants: list[Variant], size: str, seeds: int,
                **fixed) -> pd.DataFrame:
    """Another grid's rows for variants of this grid that are the same configs, so that they need not train
    again: for each {this grid's variant: its name in `table` (a runs.csv)}, the row of every seed whose run
    key is this variant's own config's (with `grid_fixed(variants, size, **fixed)`), renamed.
    Raises ConfigError naming the first run `table` lacks."""
    runs, by_name = pd.read_csv(table), {v.name: v for v in variants}
    fixed = grid_fixed(variants, size, **fixed)
    rows = []
    for name, source in names.items():
        for seed in range(seeds):
            key = run_key(by_name[name].config(size, seed, **fixed))
            match = runs[(runs["variant"] == source) & (runs["key"] == key)]
            if len(match) != 1:
                raise ConfigError(f"{table} has no run {key} ({source!r}, seed {seed}) for {name!r}: train it first")
            rows.append(match.assign(variant=name))
    return pd.concat(rows, ignore_index=True)


def run_grid(variants: list[Variant], size: str, seeds: int, out: str | Path, runs_root: str | Path | None = None,
             data=None, progress: bool = True, jobs: int = 1, scheduler: str | None = None, **fixed) -> pd.DataFrame:
    """Train every variant for seeds 0..seeds-1; rows go to `out/runs.csv` as runs finish.

    Runs already in runs.csv (same config) are skipped, so an interrupted grid resumes; runs
    live in `runs_root` (default `out/runs`), where a finished run is reloaded, not retrained.
    `fixed` config values apply to every run (each run on GRID_THREADS CPU threads unless `fixed`
    says otherwise, so that its numbers do not depend on the machine). `jobs` local processes, or
    the Dask scheduler at `scheduler`, train the runs (see `pnca_utils.experiments.parallel`); the rows are the
    same either way.
    A failed run is reported and the grid carries on; at the end `RunsFailed` lists the
    failures (runs.csv keeps the rest). Returns runs.csv as a DataFrame.
    """
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")
    fixed = grid_fixed(variants, size, **fixed)
    # seed by seed, so that an interrupted grid already has whole seeds; every config validated first
    planned = [(v, seed, v.config(size, seed, **fixed)) for seed in range(seeds) for v in variants]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "runs.csv"
    rows = pd.read_csv(table).to_dict("records") if table.exists() else []
    root = Path(runs_root) if runs_root is not None else out / "runs"
    position = {(v.name, run_key(c)): i for i, (v, _, c) in enumerate(planned)}  # a row's place in the table
    done = {(r["variant"], r["key"]) for r in rows}
    todo: dict[str, list] = {}  # run key -> the (variant, seed) rows it fills: variants may share a config
    configs = {}
    for variant, seed, config in planned:
        if (variant.name, run_key(config)) not in done:
            todo.setdefault(run_key(config), []).append((variant, seed))
            configs[run_key(config)] = config
    tasks = [Task("; ".join(f"{v.name}, seed {seed}" for v, seed in named), configs[key])
             for key, named in todo.items()]

    def record(task: Task, outcome: dict) -> None:
        for variant, seed in todo[run_key(task.config)]:
            rows.append({"variant": variant.name, "kind": variant.kind, "seed": seed, **outcome["metrics"],
                         "train_seconds": outcome["train_seconds"], "seconds": outcome["seconds"],
                         "key": run_key(task.config)})
        write_table(rows, table)

    failures = execute(tasks, root, record, jobs=jobs, scheduler=scheduler, data=data, progress=progress,
                       desc="ablation grid", done_before=len({run_key(c) for _, _, c in planned}) - len(tasks))
    write_untrained([(v, c) for v, seed, c in planned if seed == 0], out / "untrained.csv", data)
    finished = sorted((r for r in rows if (r["variant"], r["key"]) in position),
                      key=lambda r: position[(r["variant"], r["key"])])
    if failures:
        raise RunsFailed(failures, len(planned))
    _write_meta(out / "grid.json", size, seeds, max(c.epochs for _, _, c in planned), fixed, finished, jobs)
    return pd.DataFrame(finished)


# What the network computes before its first step depends on these fields only (not on the loss or the rates).
NETWORK_FIELDS = ("dataset", "data_root", "image_size", "arch", "weights", "embedding_dim", "pooling", "layernorm",
                  "seed", "threads", "device")


def write_untrained(variants: list[tuple[Variant, Config]], path: Path, data=None) -> pd.DataFrame:
    """The untrained network's metrics for each variant's config (written once to `path`, then read).

    A row that ends below its untrained network has lost what pretraining gave it, whatever its
    method; this file lets a reader check every row of the grid against where it started.
    """
    from ..training import untrained_metrics

    if path.exists():
        table = pd.read_csv(path)
        if set(table["variant"]) >= {v.name for v, _ in variants}:
            return table
    cache, rows = {}, []
    for variant, config in variants:
        network = tuple(getattr(config, f) for f in NETWORK_FIELDS)
        if network not in cache:
            cache[network] = untrained_metrics(config, data)
        rows.append({"variant": variant.name, "image_size": config.image_size, "pooling": config.pooling,
                     "layernorm": config.layernorm, "seed": config.seed, **cache[network]})
    table = pd.DataFrame(rows)
    write_table(rows, path)
    return table


def _write_meta(path: Path, size: str, seeds: int, epochs: int, fixed: dict, rows: list[dict], jobs: int) -> None:
    """What the grid ran, and on what: size, seeds, epochs, fixed values, run time, commit, versions, machine."""
    import json

    from .provenance import record

    meta = {"size": size, "seeds": seeds, "epochs": epochs, "fixed": fixed, "runs": len(rows),
            "run_seconds": round(sum(r["seconds"] for r in rows), 1), "jobs": jobs, **record()}
    path.write_text(json.dumps(meta, indent=2))


def read_meta(folder: str | Path) -> dict:
    """The `grid.json` that `run_grid` wrote in `folder` (size, seeds, epochs, machine, ...); {} when there is none."""
    import json

    path = Path(folder) / "grid.json"
    return json.loads(path.read_text()) if path.exists() else {}


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, interval low, interval high): Student-t interval of the mean; NaN with one value."""
    values = np.asarray(values, dtype=float)
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def summarize(runs: pd.DataFrame, variants: list[Variant]) -> pd.DataFrame:
    """Per variant: n, mean and std of each metric, the 95 % interval of R@1, and the paired Δ R@1 to its
    reference (seeds matched; `within_noise` when the interval of Δ holds 0: the difference is unresolved),
    beside the paper's Δ.

    The grid makes one comparison per variant with a reference, m in all. "Δ low/high, all m" is the
    paired interval at 1 − 0.05 / m (Bonferroni), and `resolved_all` says whether it excludes 0: at that
    level, the chance that any of the m comparisons is resolved by seed noise alone is at most 5 %.
    """
    metrics = [m for m in SUMMARY_METRICS if m in runs.columns]
    metrics += sorted((c for c in runs.columns if c.startswith("R@") and c not in metrics),
                      key=lambda c: int(c[2:]))
    by_name = {v.name: runs[runs["variant"] == v.name].set_index("seed") for v in variants}
    comparisons = sum(1 for v in variants if v.reference and not by_name[v.name].empty)
    rows = []
    for v in variants:
        own = by_name[v.name]
        if own.empty:
            continue
        row = {"variant": v.name, "kind": v.kind, "description": v.description, "n": len(own)}
        for m in metrics:
            row[f"{m} mean"], row[f"{m} std"] = float(own[m].mean()), float(own[m].std(ddof=1)) if len(own) > 1 else math.nan
        _, _, row["R@1 low"], row["R@1 high"] = mean_interval(own["R@1"])
        row.update({"Δ R@1": math.nan, "Δ low": math.nan, "Δ high": math.nan, "within_noise": None,
                    "Δ low, all m": math.nan, "Δ high, all m": math.nan, "resolved_all": None})
        reference = by_name.get(v.reference) if v.reference else None
        if reference is not None and not reference.empty:
            seeds = own.index.intersection(reference.index)
            if len(seeds):
                diff = own.loc[seeds, "R@1"] - reference.loc[seeds, "R@1"]
                row["Δ R@1"], _, row["Δ low"], row["Δ high"] = mean_interval(diff)
                _, _, row["Δ low, all m"], row["Δ high, all m"] = mean_interval(diff, 1 - 0.05 / comparisons)
                if len(seeds) > 1:
                    row["within_noise"] = bool(row["Δ low"] <= 0 <= row["Δ high"])
                    row["resolved_all"] = not row["Δ low, all m"] <= 0 <= row["Δ high, all m"]
        row["reference"] = v.reference or ""
        row["paper Δ R@1"] = v.paper_delta[0] if v.paper_delta else math.nan
        row["paper source"] = v.paper_delta[1] if v.paper_delta else ""
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(row) -> str:
    """A summary row's paired Δ R@1 in one word: 'drop', 'gain', 'unresolved' (the interval holds 0: the
    seeds cannot tell the difference from none, which is not the same as no difference), or '' without
    an interval."""
    if row["within_noise"] is True:
        return "unresolved"
    if row["within_noise"] is False:
        return "gain" if row["Δ R@1"] > 0 else "drop"
    return ""


def equivalence(row, margin: float) -> str:
    """A prediction of 'no effect larger than `margin` points' read from a summary row's 95 % interval:
    'holds' when the whole interval lies inside (-margin, +margin), 'fails' when it lies wholly outside
    [-margin, +margin], 'unresolved' otherwise (the interval straddles a bound)."""
    if not margin > 0:
        raise ValueError(f"margin must be a positive number of points, got {margin!r}")
    low, high = row["Δ low"], row["Δ high"]
    if -margin < low and high < margin:
        return "holds"
    if high < -margin or low > margin:
        return "fails"
    return "unresolved"


def larger_drop(row, other) -> str:
    """A prediction of 'a drop, larger than in `other`' read from two summary rows: 'holds' when `row`'s
    95 % interval lies wholly below 0 and its Δ below `other`'s, 'fails' when its interval lies wholly
    above 0 or its Δ is not below `other`'s, 'unresolved' otherwise (the interval holds 0)."""
    if row["Δ high"] < 0 and row["Δ R@1"] < other["Δ R@1"]:
        return "holds"
    if row["Δ low"] > 0 or row["Δ R@1"] >= other["Δ R@1"]:
        return "fails"
    return "unresolved"


def smaller_than(row, bound: float) -> str:
    """A prediction of 'Δ smaller than `bound`' read from a summary row: 'holds' when the whole 95 %
    interval lies below `bound`, 'fails' when the point estimate is at or above it, 'unresolved'
    otherwise (the point estimate is below `bound`, the interval reaches it)."""
    if row["Δ high"] < bound:
        return "holds"
    if row["Δ R@1"] >= bound:
        return "fails"
    return "unresolved"


def larger_than(row, bound: float) -> str:
    """A prediction of 'Δ larger than `bound`', read as `smaller_than` reads its mirror image: 'holds' when
    the whole 95 % interval lies above `bound`, 'fails' when the point estimate is at or below it."""
    return smaller_than({"Δ R@1": -row["Δ R@1"], "Δ high": -row["Δ low"]}, -bound)


def below(value: float, holds_below: float, fails_from: float) -> str:
    """A prediction of 'small' read from one measured value: 'holds' below `holds_below`, 'fails' at or
    above `fails_from`, 'unresolved' in between."""
    if not holds_below <= fails_from:
        raise ValueError(f"holds_below ({holds_below}) must not exceed fails_from ({fails_from})")
    return "holds" if value < holds_below else "fails" if value >= fails_from else "unresolved"


def best_rate(runs: pd.DataFrame, rate_of: dict[str, float], floor: float) -> float | None:
    """The rate whose variants have the highest mean R@1 over `runs` (rows with 'variant' and 'R@1'),
    each variant mapped to its rate by `rate_of`: a search that favours none of the variants trained at
    a rate. None when no run's R@1 exceeds `floor` (say, the untrained network's plus a margin)."""
    missing = sorted(set(rate_of) - set(runs["variant"]))
    if missing:
        raise ConfigError(f"the search is unfinished: no run of {', '.join(missing)}")
    runs = runs[runs["variant"].isin(rate_of)]
    if not (runs["R@1"] > floor).any():
        return None
    return float(runs.groupby(runs["variant"].map(rate_of))["R@1"].mean().idxmax())


def verdict_line(name: str, row) -> str:
    """A summary row's paired comparison in words: 'NAME against REFERENCE: Δ R@1 +x.x (95 % interval ...): verdict'."""
    return (f"{name} against {row['reference']}: Δ R@1 {row['Δ R@1']:+.1f} "
            f"(95 % interval {row['Δ low']:+.1f} to {row['Δ high']:+.1f}): {verdict(row)}")


def compare(short: pd.DataFrame, long: pd.DataFrame, labels: tuple[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """Two summaries of the same grid (say, trained for 4 and for 8 epochs) side by side.

    Returns a table per variant of `short` (R@1 mean, Δ R@1 and its verdict under each label, the
    paper's Δ) and the variants whose verdict differs between the two, as 'name (a → b)'.
    """
    a, b = short.set_index("variant"), long.set_index("variant").reindex(short["variant"])
    table = pd.DataFrame(index=a.index)
    for label, s in zip(labels, (a, b)):
        table[f"R@1, {label}"] = s["R@1 mean"]
        table[f"Δ R@1, {label}"] = s["Δ R@1"]
        table[f"verdict, {label}"] = [verdict(r) for _, r in s.iterrows()]
    table["paper Δ R@1"] = a["paper Δ R@1"]
    first, second = (table[f"verdict, {label}"] for label in labels)
    changed = [f"{name} ({first[name]} → {second[name]})" for name in table.index
               if first[name] and second[name] and first[name] != second[name]]
    return table, changed


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def to_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table: mean ± std, R@1's 95 % interval, paired Δ and the paper's Δ."""
    recall = [c[:-5] for c in summary.columns if c.startswith("R@") and c.endswith(" mean") and c != "R@1 mean"]
    head = ["variant", "n", "R@1", "R@1 95 % interval", *recall, "NMI", "Δ R@1 (paired, 95 %)", "paper Δ R@1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        interval = "" if math.isnan(r["R@1 low"]) else f"[{r['R@1 low']:.1f}, {r['R@1 high']:.1f}]"
        delta = ""
        if not math.isnan(r["Δ R@1"]):
            delta = f"{r['Δ R@1']:+.1f}"
            if not math.isnan(r["Δ low"]):
                delta += f" [{r['Δ low']:+.1f}, {r['Δ high']:+.1f}]"
            if r["within_noise"] is True:
                delta += " (unresolved)"
            elif r["resolved_all"] is True:
                delta += " ‡"
        paper_delta = "" if math.isnan(r["paper Δ R@1"]) else f"{r['paper Δ R@1']:+.1f}"
        cells = [r["variant"], str(int(r["n"])), _pm(r["R@1 mean"], r["R@1 std"]), interval,
                 *[_pm(r[f"{k} mean"], r[f"{k} std"]) for k in recall], _pm(r["NMI mean"], r["NMI std"]),
                 delta, paper_delta]
        lines.append("| " + " | ".join(cells) + " |")
    notes = _statistics_notes(summary) + sorted({f"paper Δ: {s}" for s in summary["paper source"] if s})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def _statistics_notes(summary: pd.DataFrame) -> list[str]:
    """How to read the paired intervals: the smallest difference they resolve, and the m comparisons at once."""
    paired = summary[summary["within_noise"].notna()]
    if paired.empty:
        return []
    half = (paired["Δ high"] - paired["Δ low"]) / 2
    m = int(summary["Δ R@1"].notna().sum())
    return [f"Δ's interval is the paired Student-t 95 % interval over seeds. Its half-width, from {half.min():.1f} "
            f"to {half.max():.1f} points here, is about the smallest difference this grid can tell from zero; "
            f"*unresolved* means the interval holds 0, not that the difference is 0.",
            f"{m} comparisons at once: if nothing mattered, about {0.05 * m:.1f} of them would still come out "
            f"resolved at 95 %. ‡ marks those whose Bonferroni interval (level 1 − 0.05 / {m}) also excludes 0."]


def write_summary(runs: pd.DataFrame, variants: list[Variant], out: str | Path) -> pd.DataFrame:
    """Write `out/ablation.csv` and `out/ablation.md` from the runs; return the summary."""
    summary = summarize(runs, variants)
    out = Path(out)
    summary.to_csv(out / "ablation.csv", index=False)
    (out / "ablation.md").write_text(to_markdown(summary))
    return summary
