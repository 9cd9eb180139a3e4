"""Grid search on held-out training classes: parsing, validation before work, resume, ranking."""
import pandas as pd
import pytest

from pnca_utils.experiments import tuning
from pnca_utils.cli import main
from pnca_utils.config import ConfigError

TINY = dict(weights=None, epochs=1, batch_size=8, images_per_class=2, embedding_dim=16)


def test_parse_grid_types_each_value():
    grid = tuning.parse_grid(["lr=1e-3,4e-3", "pooling=max,avg", "temperature=1/9,1"])
    assert grid == {"lr": [1e-3, 4e-3], "pooling": ["max", "avg"], "temperature": [1 / 9, 1.0]}


@pytest.mark.parametrize("bad, match", [("lr", "key=v1"), ("nope=1,2", "unknown config key"), ("lr=a,b", "lr")])
def test_parse_grid_rejects_bad_input(bad, match):
    with pytest.raises(ConfigError, match=match):
        tuning.parse_grid([bad])


def test_every_grid_point_is_validated_before_any_training(tiny_data, monkeypatch, tmp_path):
    monkeypatch.setattr("pnca_utils.training.fit", lambda *a, **k: pytest.fail("trained before validating"))
    with pytest.raises(ConfigError, match="temperature"):
        tuning.grid_search("proxynca++", "ci", {"temperature": [1.0, 0.0]}, data=tiny_data, out=tmp_path, **TINY)
    assert not (tmp_path / "search.csv").exists()


def test_search_ranks_points_and_resumes(tiny_data, tmp_path, monkeypatch):
    summary = tuning.grid_search("proxynca++", "ci", {"lr": [1e-3, 4e-3]}, seeds=2, data=tiny_data,
                                 out=tmp_path, progress=False, **TINY)
    runs = pd.read_csv(tmp_path / "search.csv")
    assert len(runs) == 4 and sorted(runs["seed"]) == [0, 0, 1, 1]
    assert list(summary["count"]) == [2, 2]
    assert summary["mean"].is_monotonic_decreasing
    for lr, mean in zip(summary["lr"], summary["mean"]):
        assert mean == pytest.approx(runs.loc[runs["lr"] == lr, "R@1"].mean())
    # every run is finished: a second search trains nothing and gives the same table
    monkeypatch.setattr("pnca_utils.training.fit", lambda *a, **k: pytest.fail("finished run trained again"))
    again = tuning.grid_search("proxynca++", "ci", {"lr": [1e-3, 4e-3]}, seeds=2, data=tiny_data,
                               out=tmp_path, progress=False, **TINY)
    pd.testing.assert_frame_equal(summary, again)


def test_cli_tune_reports_bad_grid_in_one_line(tmp_path, capsys):
    assert main(["tune", "--grid", "lr=x", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert not (tmp_path / "t").exists()


def test_cli_tune_writes_runs_and_summary(tmp_path):
    out = tmp_path / "t"
    args = ["tune", "--size", "ci", "--epochs", "1", "--set", "weights=None", "--set", "image_size=16",
            "--grid", "lr=1e-3", "--quiet", "--out", str(out)]
    assert main(args) == 0
    runs = pd.read_csv(out / "search.csv")
    assert len(runs) == 1 and runs.loc[0, "lr"] == 1e-3 and 0 <= runs.loc[0, "R@1"] <= 100
    assert (out / "summary.md").read_text().splitlines()[0].split("|")[1].strip() == "lr"


def test_epoch_budget_by_hand():
    from pnca_utils.experiments.tuning import epoch_budget

    curve = [[1, 10], [2, 20], [3, 25], [4, 25.5], [5, 25], [6, 25.9], [7, 25], [8, 25], [9, 25]]
    # after epoch 3 (best 25) the rest peaks at 25.9: +0.9 < 1, and 6 epochs follow
    assert epoch_budget(curve) == 3
    assert epoch_budget(curve, gain=0.5) == 4  # best 25.5 at 4; the rest peaks at 25.9, +0.4
    assert epoch_budget(curve, window=7) is None  # after epoch 3 only 6 epochs follow
    flat_then_rising = [[e, 30.0] for e in range(1, 8)] + [[8, 40.0]] + [[e, 40.0] for e in range(9, 15)]
    assert epoch_budget(flat_then_rising) == 8  # not cut at its flat start
    assert epoch_budget([[e, float(e)] for e in range(1, 21)]) is None  # still rising
    assert epoch_budget([[2, 5.0], [1, 1.0]] + [[e, 5.0] for e in range(3, 9)]) == 2  # order of epochs


def test_budget_table_reads_every_search(tmp_path):
    import json

    from pnca_utils.experiments.tuning import write_budgets

    for name, point in (("a", {"lr": 0.5}), ("b", {"proxy_lr": 4.0})):
        (tmp_path / name).mkdir()
        curve = [[e, min(e, 3) * 10.0] for e in range(1, 10)]
        pd.DataFrame([{"key": "k", "preset": "proxynca", "seed": 0, **point, "R@1": 30.0,
                       "val_curve": json.dumps(curve)}]).to_csv(tmp_path / name / "search.csv", index=False)
    table = write_budgets(tmp_path)
    assert list(table["search"]) == ["a", "b"] and list(table["lr"]) == ["0.5", ""]
    assert list(table["proxy_lr"]) == ["", "4"] and list(table["budget"]) == [3, 3]
    assert list(table["best R@1"]) == [30.0, 30.0]
    assert "| a " in (tmp_path / "budgets.md").read_text()


def test_read_curves_gives_one_row_per_run_and_epoch(tmp_path):
    import json

    from pnca_utils.experiments.tuning import read_curves

    (tmp_path / "s").mkdir()
    pd.DataFrame([{"key": "k", "preset": "proxynca", "seed": 1, "lr": 0.5, "R@1": 3.0,
                   "val_curve": json.dumps([[2, 3.0], [1, 1.0]])}]).to_csv(tmp_path / "s" / "search.csv", index=False)
    curves = read_curves(tmp_path)
    assert curves.to_dict("records") == [
        {"search": "s", "preset": "proxynca", "lr": 0.5, "proxy_lr": None, "seed": 1, "epoch": 1, "R@1": 1.0},
        {"search": "s", "preset": "proxynca", "lr": 0.5, "proxy_lr": None, "seed": 1, "epoch": 2, "R@1": 3.0}]
    assert read_curves(tmp_path / "nothing").empty
