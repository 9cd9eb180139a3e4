"""The ablation grid: variants change exactly their components, aggregation math, resume, CLI errors."""
import json
import math

import pandas as pd
import pytest
from scipy import stats

from pnca_utils.experiments import ablation, parallel
from pnca_utils.experiments.ablation import (COMPONENTS, Variant, grid, hdml_grid, mean_interval, proxynca_grid, run_grid,
                                 select, smaller_image_size, summarize, to_markdown, write_summary)
from pnca_utils.cli import main
from pnca_utils.config import ConfigError, make_config
from pnca_utils.training import untrained_metrics

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def _changed(a, b) -> set:
    a, b = a.to_dict(), b.to_dict()
    return {k for k in a if a[k] != b[k]}


def test_smaller_images():
    assert [smaller_image_size(s) for s in (32, 48, 64, 256)] == [24, 40, 56, 227]


def test_each_removal_changes_only_its_component():
    variants = {v.name: v for v in proxynca_grid()}
    full = variants["ProxyNCA++"].config("default", 0)
    expected = {"proxy assignment": {"positive_in_denominator"}, "low temperature": {"temperature"},
                "max pooling": {"pooling"}, "fast proxies": {"proxy_lr"}, "class-balanced batches": {"sampler"},
                "layernorm": {"layernorm"}, "image scale": {"image_size"}}
    assert [c.name for c in COMPONENTS] == list(expected)
    for name, fields in expected.items():
        assert _changed(variants[f"− {name}"].config("default", 0), full) == fields
    all_removed = variants["path 0: all removed"].config("default", 0)
    assert _changed(all_removed, full) == set().union(*expected.values())
    assert (all_removed.temperature, all_removed.positive_in_denominator, all_removed.pooling, all_removed.proxy_lr,
            all_removed.sampler, all_removed.layernorm, all_removed.image_size) == (1.0, False, "avg", None, "random",
                                                                                    False, 40)
    assert all_removed.lr == full.lr  # removals change components only, never the learning rate


def test_baseline_has_its_own_validated_settings():
    """The ProxyNCA row is the original method at the rate, budget and image size validated for it."""
    variants = {v.name: v for v in proxynca_grid()}
    baseline, full = (variants[n].config("converged", 0) for n in ("ProxyNCA", "ProxyNCA++"))
    assert (baseline.lr, baseline.epochs, baseline.image_size) == (1.0, 40, 56)
    assert (full.lr, full.proxy_lr, full.epochs, full.image_size) == (4e-2, 0.4, 20, 64)
    assert baseline.weights == full.weights == "auto-multiscale"
    assert (baseline.temperature, baseline.positive_in_denominator, baseline.pooling, baseline.proxy_lr,
            baseline.sampler, baseline.layernorm) == (1.0, False, "avg", None, "random", False)


def test_cumulative_path_adds_one_component_per_step():
    variants = proxynca_grid()
    path = [v for v in variants if v.kind == "path"] + [v for v in variants if v.kind == "full"]
    assert len(path) == len(COMPONENTS) + 1
    for size in ("default", "converged"):
        configs = [v.config(size, 0) for v in path]
        for step, component in enumerate(COMPONENTS):
            assert len(_changed(configs[step], configs[step + 1])) == 1, (size, component.name)
    assert len(variants) == 1 + 7 + 1 + 7 and len({v.name for v in variants}) == len(variants)


def test_converged_size_refuses_methods_not_yet_validated():
    with pytest.raises(ConfigError, match="no validated rates"):
        make_config("nca", "converged")


def test_hdml_trains_at_its_baselines_converged_rate_and_budget():
    for base in ("triplet", "npair"):
        plain, hdml = make_config(base, "converged"), make_config("hdml-" + base, "converged")
        assert (hdml.lr, hdml.epochs, hdml.image_size) == (plain.lr, plain.epochs, plain.image_size)
        assert hdml.image_size == 56 and hdml.weights == "auto-multiscale"


def test_paper_deltas_only_where_the_paper_gives_them():
    variants = {v.name: v for v in proxynca_grid()}
    assert variants["− low temperature"].paper_delta[0] == -10.8
    assert variants["ProxyNCA"].paper_delta[0] == -22.9
    assert all(v.paper_delta is None for v in variants.values() if v.name not in ("− low temperature", "ProxyNCA"))
    hdml = {v.name: v for v in hdml_grid()}
    assert hdml["HDML-Triplet"].paper_delta[0] == pytest.approx(43.6 - 35.9)
    assert hdml["HDML-N-pair"].paper_delta[0] == pytest.approx(53.7 - 51.9)
    assert hdml["Triplet"].paper_delta is None and hdml["HDML-N-pair"].reference == "N-pair"


def test_mean_interval_by_hand():
    mean, std, low, high = mean_interval([1, 2, 3])
    half = T_975_DF2 * 1 / math.sqrt(3)
    assert (mean, std) == (2, 1) and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    mean, std, low, high = mean_interval([5.0])
    assert mean == 5 and all(math.isnan(v) for v in (std, low, high))


def _runs(table: dict) -> pd.DataFrame:
    rows = [{"variant": name, "seed": seed, "R@1": r1, "R@2": r1 + 5, "NMI": 60.0, "MAP@R": 10.0}
            for name, values in table.items() for seed, r1 in values.items()]
    return pd.DataFrame(rows)


def test_summary_pairs_seeds_and_marks_noise():
    variants = [Variant("A", "full"), Variant("B", "removal", reference="A", paper_delta=(-10.8, "paper")),
                Variant("C", "removal", reference="A"), Variant("D", "removal", reference="A")]
    runs = _runs({"A": {0: 50, 1: 52, 2: 54}, "B": {0: 40, 1: 43, 2: 45}, "C": {0: 51, 1: 51, 2: 54},
                  "D": {1: 60}})
    summary = summarize(runs, variants).set_index("variant")
    b = summary.loc["B"]
    diffs = [40 - 50, 43 - 52, 45 - 54]  # paired by seed
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = T_975_DF2 * std / math.sqrt(3)
    assert b["Δ R@1"] == pytest.approx(mean) and b["Δ low"] == pytest.approx(mean - half)
    assert b["within_noise"] is False and b["paper Δ R@1"] == -10.8 and b["n"] == 3
    assert b["R@1 mean"] == pytest.approx(128 / 3) and b["R@1 std"] == pytest.approx(2.516611, abs=1e-6)
    assert summary.loc["C", "within_noise"] is True  # diffs 1, -1, 0
    # three comparisons (B, C, D): Bonferroni's interval is the paired one at level 1 - 0.05 / 3
    half_all = stats.t.ppf(1 - 0.05 / 6, 2) * std / math.sqrt(3)
    assert b["Δ low, all m"] == pytest.approx(mean - half_all) and b["Δ high, all m"] == pytest.approx(mean + half_all)
    assert b["resolved_all"] is True and summary.loc["C", "resolved_all"] is False
    d = summary.loc["D"]  # one seed: a difference, but no interval and no verdict
    assert d["Δ R@1"] == 8 and math.isnan(d["Δ low"]) and d["within_noise"] is None
    assert math.isnan(summary.loc["A", "Δ R@1"]) and math.isnan(summary.loc["C", "paper Δ R@1"])
    table = to_markdown(summary.reset_index())
    assert "(unresolved)" in table.splitlines()[4] and "‡" in table.splitlines()[3] and "-10.8" in table.splitlines()[3]
    assert table.splitlines()[5].endswith("| +8.0 |  |")  # D: no interval, no paper value


def test_verdicts_and_two_grids_side_by_side():
    variants = [Variant("A", "full"), Variant("B", "removal", reference="A"), Variant("C", "removal", reference="A"),
                Variant("D", "removal", reference="A")]
    short = summarize(_runs({"A": {0: 50, 1: 52, 2: 54}, "B": {0: 40, 1: 43, 2: 45}, "C": {0: 51, 1: 51, 2: 54},
                             "D": {0: 60, 1: 61, 2: 63}}), variants)
    # longer training: B's drop vanishes into noise (diffs 1, -1, 0), C becomes a drop, D stays a gain; D missing seeds
    long = summarize(_runs({"A": {0: 60, 1: 62, 2: 64}, "B": {0: 61, 1: 61, 2: 64}, "C": {0: 50, 1: 53, 2: 55},
                            "D": {0: 70}}), variants)
    assert [ablation.verdict(r) for _, r in short.iterrows()] == ["", "drop", "unresolved", "gain"]
    b = short.set_index("variant").loc["B"]
    assert ablation.verdict_line("B", b) == (f"B against A: Δ R@1 {b['Δ R@1']:+.1f} (95 % interval "
                                             f"{b['Δ low']:+.1f} to {b['Δ high']:+.1f}): drop")
    assert f"{b['Δ R@1']:+.1f}" == "-9.3"  # 10, 9, 9 lower
    table, changed = ablation.compare(short, long, ("4 ep", "8 ep"))
    assert list(table.index) == ["A", "B", "C", "D"]
    assert table.loc["B", "Δ R@1, 8 ep"] == 0 and table.loc["A", "R@1, 8 ep"] == 62
    assert table.loc["D", "verdict, 8 ep"] == ""  # one seed: no interval, no verdict, so no change is claimed
    assert changed == ["B (drop → unresolved)", "C (unresolved → drop)"]


def test_select_and_grid_names():
    assert [v.name for v in select(proxynca_grid(), ["ProxyNCA", "ProxyNCA++"])] == ["ProxyNCA", "ProxyNCA++"]
    with pytest.raises(ConfigError, match="'nope'"):
        select(proxynca_grid(), ["nope"])
    with pytest.raises(ConfigError, match="unknown grid"):
        grid("other")


def test_grid_runs_resumes_and_is_deterministic(tiny_data, tmp_path, monkeypatch):
    variants = select(proxynca_grid(), ["ProxyNCA++", "− low temperature"])
    fixed = dict(weights=None, epochs=1, batch_size=16, embedding_dim=16)
    calls = []
    real = parallel.train_run
    monkeypatch.setattr(parallel, "train_run", lambda config, *a, **k: calls.append(config) or real(config, *a, **k))
    first = run_grid(variants, "ci", 2, tmp_path, data=tiny_data, progress=False, **fixed)
    assert len(calls) == 4 and len(first) == 4
    assert sorted(zip(first["variant"], first["seed"])) == sorted((v.name, s) for v in variants for s in (0, 1))
    assert run_grid(variants, "ci", 2, tmp_path, data=tiny_data, progress=False, **fixed).equals(first)
    assert len(calls) == 4  # nothing retrained
    meta = ablation.read_meta(tmp_path)
    assert meta == json.loads((tmp_path / "grid.json").read_text())
    assert (meta["size"], meta["seeds"], meta["epochs"], meta["runs"]) == ("ci", 2, 1, 4)
    assert meta["fixed"] == ablation.grid_fixed(variants, "ci", **fixed)  # a script can rebuild the grid's configs
    assert ablation.read_meta(tmp_path / "no-grid") == {}
    untrained = pd.read_csv(tmp_path / "untrained.csv").set_index("variant")
    assert list(untrained.index) == [v.name for v in variants]
    full = variants[0].config("ci", 0, **{**fixed, "threads": 1, "eval_every": 1})
    assert untrained.loc["ProxyNCA++", "R@1"] == untrained_metrics(full, tiny_data)["R@1"]
    # the temperature does not change the untrained network: one evaluation serves both rows
    assert untrained.loc["− low temperature", "R@1"] == untrained.loc["ProxyNCA++", "R@1"]

    table = pd.read_csv(tmp_path / "runs.csv")
    lost = table.iloc[1]
    table.drop(index=1).to_csv(tmp_path / "runs.csv", index=False)
    for run in (tmp_path / "runs").glob(f"{lost['key']}"):
        for f in run.iterdir():
            f.unlink()
        run.rmdir()
    again = run_grid(variants, "ci", 2, tmp_path, data=tiny_data, progress=False, **fixed)
    assert len(calls) == 5 and len(again) == 4  # only the deleted run is trained again ...
    redone = again[again["key"] == lost["key"]].iloc[0]
    assert redone["R@1"] == lost["R@1"] and redone["NMI"] == lost["NMI"]  # ... with the same result
    summary = write_summary(again, variants, tmp_path)
    assert (tmp_path / "ablation.md").read_text().startswith("| variant |")
    assert list(summary["n"]) == [2, 2]


def test_grid_fixed_adds_threads_and_one_final_evaluation_unless_given():
    variants = [Variant("short", "full", overrides={"epochs": 3}), Variant("long", "full", overrides={"epochs": 5})]
    assert ablation.grid_fixed(variants, "ci", lr=0.1) == {"threads": ablation.GRID_THREADS, "lr": 0.1, "eval_every": 5}
    assert ablation.grid_fixed(variants, "ci", threads=2, eval_every=1) == {"threads": 2, "eval_every": 1}


def test_variants_sharing_a_config_train_once_and_each_get_their_rows(tiny_data, tmp_path, monkeypatch):
    """'− image scale' and the path's last step are the same run: one training, a row under each name."""
    variants = [Variant("A", "full"), Variant("same as A", "path", reference="A"), Variant("warm", "removal",
                                                                                          removed=("low temperature",))]
    fixed = dict(weights=None, epochs=1, batch_size=16, embedding_dim=16)
    calls = []
    real = parallel.train_run
    monkeypatch.setattr(parallel, "train_run", lambda config, *a, **k: calls.append(config) or real(config, *a, **k))
    runs = run_grid(variants, "ci", 2, tmp_path, data=tiny_data, progress=False, **fixed)
    assert len(calls) == 4
    assert list(zip(runs["variant"], runs["seed"])) == [(v.name, s) for s in (0, 1) for v in variants]
    a, same = runs[runs["variant"] == "A"], runs[runs["variant"] == "same as A"]
    assert list(a["R@1"]) == list(same["R@1"]) and list(a["key"]) == list(same["key"])
    assert run_grid(variants, "ci", 2, tmp_path, data=tiny_data, progress=False, **fixed).equals(runs)
    assert len(calls) == 4 and len(pd.read_csv(tmp_path / "runs.csv")) == 6


def test_cli_rejects_unknown_variant_before_any_work(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["ablate", "--variant", "nope", "--out", str(out), "--size", "ci"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and "\n" not in err
    assert not out.exists()
    assert main(["ablate", "--grid", "x", "--out", str(out)]) == 2 and not out.exists()
    assert main(["ablate", "--seeds", "0", "--out", str(out)]) == 2 and not out.exists()


def test_seeds_and_configs_match_make_config():
    v = Variant("ProxyNCA++", "full")
    assert v.config("ci", 3).to_dict() == make_config("proxynca++", "ci", seed=3).to_dict()


@pytest.mark.parametrize("low, high, expected", [
    (-1.0, 2.0, "holds"),  # inside (-3, 3)
    (-2.9, 2.9, "holds"),
    (-4.0, 1.0, "unresolved"),  # straddles -3
    (2.0, 5.0, "unresolved"),  # straddles +3
    (-3.0, 1.0, "unresolved"),  # touches the bound: not strictly inside
    (3.5, 9.0, "fails"),  # wholly above +3
    (-8.0, -3.1, "fails"),  # wholly below -3
])
def test_equivalence_reads_the_interval_against_the_margin(low, high, expected):
    assert ablation.equivalence({"Δ low": low, "Δ high": high}, 3.0) == expected


def test_equivalence_needs_a_positive_margin():
    with pytest.raises(ValueError, match="margin"):
        ablation.equivalence({"Δ low": -1.0, "Δ high": 1.0}, 0)


@pytest.mark.parametrize("many, few, expected", [
    ((-5.0, -8.0, -2.0), -1.0, "holds"),       # below 0, and a larger drop than -1
    ((-5.0, -8.0, -2.0), -6.0, "fails"),       # below 0, but a smaller drop than -6
    ((-5.0, -8.0, -2.0), -5.0, "fails"),       # equal drops: not larger
    ((2.0, 1.0, 3.0), 5.0, "fails"),           # interval above 0
    ((-1.0, -4.0, 2.0), 0.0, "unresolved"),    # the interval holds 0
])
def test_larger_drop_reads_the_interval_and_the_other_regime(many, few, expected):
    row = {"Δ R@1": many[0], "Δ low": many[1], "Δ high": many[2]}
    assert ablation.larger_drop(row, {"Δ R@1": few}) == expected


def test_best_rate_averages_each_rates_variants_by_hand():
    rate_of = {"a at 1": 1.0, "b at 1": 1.0, "a at 2": 2.0, "b at 2": 2.0}
    runs = pd.DataFrame({"variant": ["a at 1", "b at 1", "a at 2", "b at 2", "other"],
                         "R@1": [30.0, 10.0, 25.0, 20.0, 99.0]})
    # rate 1: (30 + 10) / 2 = 20; rate 2: (25 + 20) / 2 = 22.5; the best single run (30) is at rate 1
    assert ablation.best_rate(runs, rate_of, floor=5.0) == 2.0
    assert ablation.best_rate(runs, rate_of, floor=30.0) is None  # no run of the search above the floor
    with pytest.raises(ConfigError, match="unfinished: no run of b at 2"):
        ablation.best_rate(runs[runs["variant"] != "b at 2"], rate_of, floor=5.0)


@pytest.mark.parametrize("delta, expected", [
    ((2.0, -1.0, 5.0), "holds"),        # the whole interval below 7.3
    ((8.0, 6.0, 10.0), "fails"),        # the point estimate above 7.3
    ((7.3, 5.0, 9.0), "fails"),         # at the bound: not smaller
    ((6.0, 2.0, 10.0), "unresolved"),   # below 7.3, but the interval reaches it
])
def test_smaller_than_reads_the_interval_against_the_bound(delta, expected):
    row = {"Δ R@1": delta[0], "Δ low": delta[1], "Δ high": delta[2]}
    assert ablation.smaller_than(row, 7.3) == expected


@pytest.mark.parametrize("value, expected", [(9.9, "holds"), (10.0, "unresolved"), (19.9, "unresolved"),
                                             (20.0, "fails"), (65.0, "fails")])
def test_below_reads_a_value_against_its_two_thresholds(value, expected):
    assert ablation.below(value, 10, 20) == expected


def test_below_refuses_thresholds_the_wrong_way_round():
    with pytest.raises(ValueError, match="must not exceed"):
        ablation.below(5, 20, 10)


def test_shared_rows_copies_another_grids_runs_of_the_same_config_renamed(tmp_path):
    from pnca_utils.experiments.runs import run_key

    ours = [Variant("mine", "full", overrides={"epochs": 2}), Variant("warm", "removal", removed=("low temperature",),
                                                                     overrides={"epochs": 2})]
    fixed = ablation.grid_fixed(ours, "ci")
    keys = [run_key(ours[0].config("ci", seed, **fixed)) for seed in (0, 1)]
    other = run_key(ours[1].config("ci", 0, **fixed))
    pd.DataFrame({"variant": ["theirs", "theirs", "theirs", "other"], "seed": [0, 1, 2, 0], "R@1": [50.0, 60.0, 70.0, 1.0],
                  "key": [keys[0], keys[1], "unrelated", other]}).to_csv(tmp_path / "runs.csv", index=False)
    rows = ablation.shared_rows(tmp_path / "runs.csv", {"mine": "theirs"}, ours, "ci", 2)
    assert rows[["variant", "seed", "R@1"]].values.tolist() == [["mine", 0, 50.0], ["mine", 1, 60.0]]
    with pytest.raises(ConfigError, match="no run .* seed 2"):  # the third row is another config's run
        ablation.shared_rows(tmp_path / "runs.csv", {"mine": "theirs"}, ours, "ci", 3)
    with pytest.raises(ConfigError, match="'warm'"):  # the same key under another name is not this variant's
        ablation.shared_rows(tmp_path / "runs.csv", {"warm": "theirs"}, ours, "ci", 1)


@pytest.mark.parametrize("delta, expected", [
    ((5.0, 1.0, 9.0), "holds"),         # the whole interval above 0
    ((0.0, -2.0, 2.0), "fails"),        # at the bound: not larger
    ((-1.0, -3.0, 1.0), "fails"),
    ((2.0, -1.0, 5.0), "unresolved"),   # above 0, but the interval reaches it
])
def test_larger_than_reads_the_interval_against_the_bound(delta, expected):
    assert ablation.larger_than({"Δ R@1": delta[0], "Δ low": delta[1], "Δ high": delta[2]}, 0.0) == expected

