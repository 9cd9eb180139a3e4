"""The command line: train and evaluate on the default embedded set, and one-line errors that write nothing."""
import json
import subprocess
import sys

import pytest
import torch

from pnca_utils import cli

METRICS = {"R@1", "R@2", "R@4", "R@8", "NMI", "MAP@R", "RP"}
# The default embedded set (built once per session), one epoch from scratch at 16×16 to keep it fast.
TRAIN = ["train", "--size", "ci", "--epochs", "1", "--set", "weights=None", "--set", "image_size=16", "--quiet"]


def run(args, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        code = cli.main(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(TRAIN + ["--out", str(out)]) == 0
    return out


def test_train_writes_metrics_history_and_checkpoint(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert METRICS | {"config", "seconds"} <= set(metrics)
    assert all(0 <= metrics[k] <= 100 for k in METRICS)
    assert metrics["config"]["weights"] is None and metrics["config"]["image_size"] == 16
    assert metrics["config"]["dataset"] == "embedded" and metrics["config"]["epochs"] == 1
    history = json.loads((trained / "history.json").read_text())
    assert len(history["epochs"]) == 1 and len(history["steps"]) == 4000 // 32
    assert history["epochs"][0]["R@1"] == metrics["R@1"]
    assert torch.load(trained / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_evaluate_reproduces_the_metrics(trained, tmp_path, capsys):
    code, out, err = run(["evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--out", str(tmp_path)],
                         capsys)
    assert code == 0, err
    trained_metrics = json.loads((trained / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert evaluated["R@1"] == trained_metrics["R@1"]
    assert {k: evaluated[k] for k in METRICS} == {k: trained_metrics[k] for k in METRICS}
    assert json.loads(out)["R@1"] == round(trained_metrics["R@1"], 2)


@pytest.mark.parametrize("args", [
    ["--dataset", "cub"],  # no data root
    ["--dataset", "cub", "--data-root", "/nonexistent/cub"],
    ["--dataset", "imagenet"],
    ["--preset", "proxynca+++"],
    ["--size", "huge"],
    ["--set", "colour=red"],
    ["--set", "method=arcface"],
    ["--set", "temperature=0"],
    ["--set", "temperature=-0.1"],
    ["--set", "temperature=1/0"],
    ["--set", "lr=0"],
    ["--set", "lr=-4e-3"],
    ["--set", "proxy_lr=0"],
    ["--set", "images_per_class=0"],
    ["--set", "skip_bad_images=maybe"],
    ["--seed", "-1"],
    ["--set", "batch_size=30"],  # not divisible by 4 images per class
    ["--set", "batch_size=512"],  # 128 classes per batch, the set has 100
    ["--epochs", "two"],
], ids=lambda args: " ".join(args))
def test_bad_train_input_is_one_error_line_and_writes_nothing(args, tmp_path, capsys, trained):
    out = tmp_path / "out"
    code, stdout, err = run(TRAIN + args + ["--out", str(out)], capsys)
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("checkpoint", ["missing.pt", "garbage.pt"])
def test_bad_checkpoint_is_one_error_line(checkpoint, tmp_path, capsys):
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    out = tmp_path / "out"
    code, _, err = run(["evaluate", "--checkpoint", str(tmp_path / checkpoint), "--out", str(out)], capsys)
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1 and checkpoint in err, err
    assert not out.exists()


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pnca_utils", *TRAIN, "--set", "temperature=0", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: temperature") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == "" and not out.exists()


def test_evaluate_defaults_to_the_checkpoints_data_and_split(tiny_data, tmp_path, capsys, monkeypatch):
    """A run on a folder data set with eval_split=val is evaluated on that set's validation classes."""
    monkeypatch.setattr(cli, "load_data", lambda *args, **kwargs: tiny_data)  # stands in for the folder set
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    code, _, err = run(["train", "--dataset", "folder", "--data-root", str(tmp_path), "--size", "ci", "--epochs", "1",
                        "--quiet", "--set", "weights=None", "--set", "eval_split=val", "--set", "val_fraction=0.25",
                        "--set", "batch_size=16", "--out", str(run_dir)], capsys)
    assert code == 0, err
    code, _, err = run(["evaluate", "--checkpoint", str(run_dir / "checkpoint.pt"), "--out", str(eval_dir)], capsys)
    assert code == 0, err
    trained, evaluated = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, eval_dir))
    assert evaluated["config"]["dataset"] == "folder" and evaluated["config"]["data_root"] == str(tmp_path)
    assert {k: evaluated[k] for k in METRICS} == {k: trained[k] for k in METRICS}


def test_version_and_choices(capsys, tmp_path):
    from pnca_utils import __version__

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and __version__ in capsys.readouterr().out
    for args in (["train", "--preset", "nope"], ["tune", "--size", "huge", "--grid", "lr=1"],
                 ["ablate", "--size", "huge"]):
        with pytest.raises(SystemExit) as done:
            cli.main([*args, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert done.value.code == 2 and "invalid choice" in err and "\n" == err[-1] and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_train_runs_at_its_defaults_on_a_folder_of_images(tmp_path, mode, channels):
    """`train --dataset folder` with nothing else set: greyscale scans load as one channel, colour
    photos as three (the pretrained small CNN then sees their grey level: models.colour_from_grey)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c in range(16):  # 8 training classes of 4 images fill one class-balanced batch of 32
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(4):
            shape = (40, 40) if mode == "L" else (40, 40, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"class{c:02d}/{i}.png")
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "folder", "--data-root", str(root), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["R@1"] <= 100 and metrics["config"]["weights"] == "auto"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["model"]["backbone.body.0.weight"].shape[1] == channels


def test_exit_codes_tell_bad_input_from_a_failed_run(tmp_path, capsys):
    """2: the command could not start (bad config); 1: it started and the run failed (a NaN loss here)."""
    code, _, err = run(TRAIN + ["--set", "lr=-1", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "lr" in err
    code, _, err = run(TRAIN + ["--set", "lr=1e30", "--set", "proxy_lr=1e30", "--out", str(tmp_path / "nan")], capsys)
    assert code == 1 and "loss became" in err and err.count("\n") == 1


def test_book_and_site_are_subcommands(tmp_path, capsys):
    import nbformat

    assert cli.main(["book", "--only", "99", "--out", str(tmp_path / "unused")]) == 1  # the book runner's own error
    assert "99" in capsys.readouterr().err
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 00 · T")]), tmp_path / "00_a.ipynb")
    assert cli.main(["site", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "site" / "00_a.html").is_file()
    assert "book" in cli.parser().format_help() and "site" in cli.parser().format_help()
