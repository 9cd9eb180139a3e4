"""Grid search on held-out training classes: parsing, validation before work, resume, ranking."""
import pandas as pd
import pytest

from pnca_utils import tuning
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
