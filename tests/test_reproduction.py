"""The reproduction helpers: runs found on disk, the table beside the paper's, command lines, the toy tree."""
import json
import math
import shlex

import numpy as np
import pytest

from pnca_utils.cli import _overrides, parser
from pnca_utils.config import make_config
from pnca_utils.data.real import load_folder
from pnca_utils.paper import PROXYNCA_PP
from pnca_utils.experiments.reproduction import (commands, find_runs, is_paper_method, make_toy_folder, preset_differences,
                                                run_budget, saved_activation_bytes,
                                     results_table, runs_table, table_records)


def write_run(folder, config, **metrics):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({**metrics, "config": config.to_dict(), "seconds": 9.0}))


def paper_config(dataset="cub", **overrides):
    return make_config("proxynca++", "paper", dataset=dataset, data_root="/data", weights="/w/r50.pth", **overrides)


@pytest.fixture
def results(tmp_path):
    write_run(tmp_path / "cub", paper_config(), **{"R@1": 70.0, "R@2": 80.0, "R@4": 88.0, "R@8": 93.0, "NMI": 70.0})
    write_run(tmp_path / "cub-seed1", paper_config(seed=1), **{"R@1": 72.0, "R@2": 82.0, "R@4": 89.0, "R@8": 94.0})
    write_run(tmp_path / "deep" / "runs" / "x", paper_config("sop", embedding_dim=512, lr=4e-3), **{"R@1": 80.0})
    write_run(tmp_path / "embedded", make_config("proxynca++", "ci"), **{"R@1": 50.0})  # not a real data set
    write_run(tmp_path / "original", make_config("proxynca", "paper", dataset="cub", data_root="/d", weights="/w"),
              **{"R@1": 50.0})  # not ProxyNCA++
    write_run(tmp_path / "no-temperature", paper_config(temperature=1.0), **{"R@1": 60.0})  # an ablation variant
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    return tmp_path


def test_find_runs_keeps_the_papers_method_only(results, tmp_path):
    runs = find_runs(results, results / "deep", tmp_path / "missing")  # overlapping and missing roots
    assert [(r.dataset, r.embedding_dim, r.seed) for r in runs] == [("cub", 2048, 0), ("cub", 2048, 1), ("sop", 512, 0)]
    assert runs[0].differences == {} and runs[0].metrics["R@1"] == 70.0 and "seconds" not in runs[0].metrics
    assert runs[2].differences == {"lr": (2.4e-2, 4e-3)}
    table = runs_table(runs)
    assert list(table["differences from the preset"]) == ["none", "none", "lr=0.004 (preset 0.024)"]


def test_preset_differences_flag_random_weights_and_missing_fields():
    config = paper_config(epochs=3, warmup_epochs=1).to_dict()
    config.update(weights=None, device="cuda", seed=4)
    del config["amp"]
    assert preset_differences(config) == {"epochs": (45, 3), "warmup_epochs": (5, 1), "amp": (True, "(absent)"),
                                          "weights": ("ImageNet weights", None)}
    assert is_paper_method(config)
    with pytest.raises(ValueError, match="embedded"):
        preset_differences(make_config("proxynca++", "ci").to_dict())


def test_results_table_sets_ours_beside_the_paper(results):
    table = results_table(find_runs(results)).set_index(["dataset", "dim", "metric"])
    cub = table.loc[("cub", 2048, "R@1")]
    assert (cub["paper"], cub["ours"], cub["runs"], cub["off preset"]) == (PROXYNCA_PP[("cub", 2048)]["R@1"], 71.0, 2, 0)
    assert cub["sd"] == pytest.approx(np.std([70.0, 72.0], ddof=1))
    assert cub["ours - paper"] == pytest.approx(71.0 - PROXYNCA_PP[("cub", 2048)]["R@1"])
    nmi = table.loc[("cub", 2048, "NMI")]
    assert math.isnan(nmi["paper"]) and nmi["ours"] == 70.0 and nmi["runs"] == 1  # the paper gives no NMI
    assert math.isnan(table.loc[("sop", 512, "R@10"), "ours"])  # the run has only R@1
    assert tuple(table.loc[("sop", 512, "R@1"), ["ours", "runs", "off preset"]]) == (80.0, 1, 1)  # lr differs
    assert math.isnan(table.loc[("cars", 2048, "R@1"), "ours"])  # no run: ours blank


def test_results_table_without_runs_is_the_papers_table():
    table = results_table([])
    assert len(table) == sum(len(m) for m in PROXYNCA_PP.values())
    assert table["ours"].isna().all() and (table["runs"] == 0).all()
    records = table_records(table)
    assert records[0] == {"dataset": "cub", "dim": 2048, "metric": "R@1", "paper": 72.2, "ours": None, "sd": None,
                          "runs": 0, "off preset": 0, "ours - paper": None}
    json.dumps(records, allow_nan=False)


@pytest.mark.parametrize("key", ["train", "train 512", "several GPUs", "more seeds"])
def test_commands_are_valid_command_lines(key):
    line = commands("sop", "/data/Stanford Online_Products", "/w/resnet50.pth", seeds=2)[key]
    words = shlex.split(line.split("do ", 1)[-1].split(";")[0].replace("$s", "1"))  # the loop's body for 'more seeds'
    args = parser().parse_args(words[words.index("pnca_utils") + 1:])
    config = make_config(args.preset, args.size, **_overrides(args))
    assert (config.dataset, config.data_root, config.weights) == ("sop", "/data/Stanford Online_Products", "/w/resnet50.pth")
    assert config.embedding_dim == (512 if key == "train 512" else 2048) and config.device == "cuda"
    with pytest.raises(ValueError, match="folder"):
        commands("folder")


def test_every_command_writes_its_own_folder():
    lines = commands("cub", "/d", "/w.pth")
    outs = [shlex.split(lines[key])[shlex.split(lines[key]).index("--out") + 1]
            for key in ("train", "train 512", "several GPUs", "evaluate", "ablation")]
    assert len(set(outs)) == len(outs)


def test_toy_folder_is_a_deterministic_folder_data_set(tmp_path):
    make_toy_folder(tmp_path / "a", num_classes=6, images_per_class=3, image_size=24)
    make_toy_folder(tmp_path / "b", num_classes=6, images_per_class=3, image_size=24)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 18 and str(files[0]) == "00_red_disc/000.png"
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    data = load_folder(tmp_path / "a", 16)
    assert (data.num_train_classes, len(data.test.classes), len(data.train)) == (3, 3, 9)
    assert data.train[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="classes"):
        make_toy_folder(tmp_path / "c", num_classes=13)


def test_ablation_and_evaluate_commands_parse():
    lines = commands("cub", "/data/cub", "/w/r50.pth")
    for key in ("ablation", "evaluate"):
        words = shlex.split(lines[key])
        args = parser().parse_args(words[words.index("pnca_utils") + 1:])
        assert args.device == "cuda"
    args = parser().parse_args(shlex.split(lines["ablation"])[3:])
    assert (args.size, args.dataset, args.data_root, args.set) == ("paper", "cub", "/data/cub", ["weights=/w/r50.pth"])


def test_run_budget_follows_the_preset_and_the_split_sizes():
    cub = run_budget("cub")
    assert cub["steps per epoch"] == 5_864 // 32 == 183 and cub["epochs"] == 45
    assert cub["steps"] == 183 * 45 and cub["images trained"] == 183 * 45 * 32
    assert cub["images evaluated"] == 45 * 5_924  # evaluated after every epoch
    sop = run_budget("sop", embedding_dim=512)
    assert sop["steps per epoch"] == 59_551 // 192 == 310 and sop["epochs"] == 85
    assert sop["images evaluated"] == 17 * 60_502  # every 5 epochs: 5, 10, ..., 85
    assert sop["proxy values"] == 11_318 * 512
    with pytest.raises(ValueError, match="no paper preset"):
        run_budget("embedded")


def test_saved_activation_bytes_counts_what_backward_keeps_per_image():
    import torch

    # the first Linear saves its input (1 x 2 x 2 floats per image, 16 bytes), ReLU its output (5 floats, 20 bytes),
    # which the second Linear saves too (one storage, counted once) with its weight: a parameter, not an activation
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    assert saved_activation_bytes(model, image_size=2, channels=1) == 16 + 20
