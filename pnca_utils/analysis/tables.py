"""Tables and sentences about runs, for every chapter: metrics side by side, a change in words, stored tables."""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd


METRIC_COLUMNS = ("R@1", "R@2", "R@4", "R@8", "NMI", "MAP@R", "RP")


def metrics_table(runs: Mapping[str, Mapping[str, float]], columns: Sequence[str] = METRIC_COLUMNS) -> pd.DataFrame:
    """One row per run (in the order given), one column per metric of `columns` that some run has (percent)."""
    if not runs:
        raise ValueError("runs is empty: give at least one {name: metrics} entry")
    present = [c for c in columns if any(c in m for m in runs.values())]
    if not present:
        raise ValueError(f"no run has any of the columns {', '.join(columns)}")
    return pd.DataFrame([{c: m.get(c, float("nan")) for c in present} for m in runs.values()],
                        index=list(runs), columns=present)


def describe_change(before: float, after: float, metric: str = "R@1", digits: int = 1) -> str:
    """'raised R@1 from 4.3 to 6.1 (+1.8 points)', 'lowered ...', or 'left R@1 unchanged at 4.3'.

    Compared at the printed precision, so the words always agree with the numbers shown.
    """
    b, a = round(float(before), digits), round(float(after), digits)
    if a == b:
        return f"left {metric} unchanged at {b:.{digits}f}"
    verb = "raised" if a > b else "lowered"
    return f"{verb} {metric} from {b:.{digits}f} to {a:.{digits}f} ({a - b:+.{digits}f} points)"


def read_table(path, required: Sequence[str] = ()) -> pd.DataFrame | None:
    """The CSV at `path` as a DataFrame, or None when it is missing, unreadable, empty or lacks a column
    of `required` (so a chapter can fall back to its own runs)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return None
    if table.empty or any(c not in table.columns for c in required):
        return None
    return table


def read_paired(folder) -> tuple[pd.DataFrame, pd.DataFrame, dict] | None:
    """A committed paired comparison (a grid's ablation.csv and runs.csv in `folder`), or None when its
    summary is missing or unreadable.

    Returns the summary indexed by variant, R@1 with a row per seed and a column per variant, and
    {variant: (reference, variant)} for each variant compared with a reference (the pairs
    `plots.paired_seeds` draws).
    """
    from pathlib import Path

    summary = read_table(Path(folder) / "ablation.csv", ["variant", "reference", "R@1 mean", "Δ R@1", "Δ low", "Δ high"])
    if summary is None:
        return None
    by_seed = pd.read_csv(Path(folder) / "runs.csv").pivot(index="seed", columns="variant", values="R@1")
    compared = summary.dropna(subset=["Δ R@1"])
    pairs = {variant: (reference, variant) for variant, reference in zip(compared["variant"], compared["reference"])}
    return summary.set_index("variant"), by_seed, pairs


def compare_to_reference(reference: Mapping[str, float], runs: Mapping[str, Mapping[str, float]],
                         reference_name: str = "reference", columns: Sequence[str] = METRIC_COLUMNS,
                         delta: str = "R@1", digits: int = 1) -> pd.DataFrame:
    """`metrics_table` of the reference run and `runs`, with a column "Δ <delta>": each run minus the reference.

    Δ is taken between the values rounded to `digits`, so it always agrees with the printed table.
    """
    table = metrics_table({reference_name: reference, **runs}, columns)
    if delta not in table.columns:
        raise ValueError(f"no run has {delta!r}")
    rounded = table[delta].map(lambda v: round(float(v), digits))  # Python's round, as f"{v:.{digits}f}" prints
    table[f"Δ {delta}"] = (rounded - rounded.iloc[0]).round(digits)
    return table
