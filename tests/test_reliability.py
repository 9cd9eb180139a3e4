"""Reliability: bad input stops the CLI with one clear line and writes nothing; faults keep the last good
checkpoint; an interrupted run resumes to the same result.

Where each case is tested (this file holds the cases that cross modules, through the CLI):
- unknown data set, preset, size, method or --set key; invalid values (temperature or learning rate
  <= 0, batch size not divisible by images per class, more classes per batch than training classes):
  test_cli.py (test_bad_train_input_is_one_error_line_and_writes_nothing) and test_config.py;
- missing data root and wrong layout of every real data set: test_data_real.py (loaders) and here (CLI);
- unreadable image, named or skipped with a count (skip_bad_images): test_data_real.py and here;
- a class with fewer images than a balanced batch needs: test_samplers.py and here;
- a chapter parameter of the wrong type or name: test_book.py (test_wrong_parameter_is_rejected_...);
- NaN loss, bit-identical resume, weights_only checkpoints, same seed same metrics.json: test_training.py;
  inf loss, a checkpoint write that fails halfway, Ctrl-C and resume, through the CLI: here;
- truncated or tampered data cache rebuilt: test_embedded.py (test_damaged_cache_is_rebuilt).
"""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pnca_utils import cli, training

# ProxyNCA++ on the tiny embedded set (conftest.tiny_data): 2 epochs of 4 steps, from scratch.
TINY = ["train", "--size", "ci", "--epochs", "2", "--quiet", "--set", "weights=None", "--set", "batch_size=16",
        "--set", "embedding_dim=16", "--set", "lr=4e-3"]
# A real-data run on a folder tree of tiny RGB images: batches of 2 classes x 2 images, one epoch.
FOLDER = ["train", "--dataset", "folder", "--size", "ci", "--epochs", "1", "--quiet", "--set", "weights=None",
          "--set", "image_size=16", "--set", "batch_size=4", "--set", "images_per_class=2", "--set", "embedding_dim=8"]


def run(args, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *fragments):
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert str(fragment) in err, (fragment, err)


def without_seconds(obj):
    """metrics.json or history.json minus its timings."""
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [without_seconds(v) for v in obj]
    return obj


def read(out, name):
    return json.loads((out / name).read_text())


def image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)
    return path


def folder_tree(root, sizes):
    """ROOT/<class>/<n>.png with sizes[class] images each; classes sorted, the first half train."""
    for k, (c, n) in enumerate(sizes.items()):
        for i in range(n):
            image(root / c / f"{i}.png", seed=100 * k + i)
    return root


@pytest.fixture
def tiny_cli(tiny_data, monkeypatch):
    """The CLI reads the tiny embedded set instead of the default one."""
    monkeypatch.setattr(cli, "load_data", lambda *args, **kwargs: tiny_data)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """An uninterrupted run of TINY: its output folder."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "load_data", lambda *args, **kwargs: tiny_data)
        assert cli.main(TINY + ["--out", str(out)]) == 0
    return out


def assert_same_run(out, reference):
    """Same metrics.json and history.json apart from timings, step by step (bit-identical floats)."""
    assert without_seconds(read(out, "metrics.json")) == without_seconds(read(reference, "metrics.json"))
    assert without_seconds(read(out, "history.json")) == without_seconds(read(reference, "history.json"))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop", "folder"])
def test_missing_data_root(name, tmp_path, capsys):
    root, out = tmp_path / "nowhere", tmp_path / "out"
    code, _, err = run(FOLDER[:1] + ["--dataset", name, "--data-root", root, "--out", out], capsys)
    assert_one_error_line(code, err, root, "the folder does not exist", "Expected layout: ROOT/")
    assert not out.exists()


def _cub_without_images_folder(root):
    image(root / "001.Albatross" / "a.jpg")


def _cub_class_without_number(root):
    image(root / "images" / "Albatross" / "a.jpg")


def _cars_without_annotations(root):
    image(root / "car_ims" / "000001.jpg")


def _sop_bad_row(root):
    (root / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n1 bicycle 1 a.JPG\n")


def _inshop_bad_status(root):
    (root / "list_eval_partition.txt").write_text("1\nimage_name item_id evaluation_status\nimg/a.jpg id_1 val\n")


def _folder_flat(root):
    image(root / "a.png")


def _folder_one_class(root):
    folder_tree(root, {"cats": 3})


WRONG_LAYOUTS = [
    ("cub", _cub_without_images_folder, "no images/ folder"),
    ("cub", _cub_class_without_number, "does not start with a class number"),
    ("cars", _cars_without_annotations, "cars_annos.mat does not exist"),
    ("sop", _sop_bad_row, "Ebay_train.txt, line 2: expected 'image_id class_id super_class_id path'"),
    ("inshop", _inshop_bad_status, "line 3: expected 'image_name item_id train|query|gallery'"),
    ("folder", _folder_flat, "no images found in its sub-folders"),
    ("folder", _folder_one_class, "the train split has 0 class(es)"),
]


@pytest.mark.parametrize("name, make, problem", WRONG_LAYOUTS, ids=[m.__name__[1:] for _, m, _ in WRONG_LAYOUTS])
def test_wrong_layout(name, make, problem, tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    root.mkdir()
    make(root)
    code, _, err = run(FOLDER[:1] + ["--dataset", name, "--data-root", root, "--out", out], capsys)
    assert_one_error_line(code, err, f"{name} data set at {root}: ", problem, "Expected layout: ROOT/")
    assert not out.exists()


def test_unreadable_image_is_named_or_skipped_with_a_count(tmp_path, capsys):
    root = folder_tree(tmp_path / "data", {"a": 4, "b": 4, "c": 4, "d": 4})
    bad = root / "a" / "2.png"
    bad.write_text("not a picture")
    out = tmp_path / "out"
    code, _, err = run(FOLDER + ["--data-root", root, "--out", out], capsys)
    assert_one_error_line(code, err, f"cannot read image {bad}", "--skip-bad-images")
    assert not out.exists()

    code, stdout, err = run(FOLDER + ["--data-root", root, "--out", out, "--skip-bad-images"], capsys)
    assert code == 0, err
    assert err == f"warning: left out 1 unreadable image(s) of the folder data set, first {bad}\n"
    metrics = read(out, "metrics.json")
    assert metrics["config"]["skip_bad_images"] is True and json.loads(stdout)["R@1"] == round(metrics["R@1"], 2)
    # The checkpoint remembers the choice: evaluating it leaves the same image out.
    code, _, err = run(["evaluate", "--checkpoint", out / "checkpoint.pt", "--out", tmp_path / "eval"], capsys)
    assert code == 0 and "left out 1 unreadable image" in err, err
    assert without_seconds(read(tmp_path / "eval", "metrics.json")) == without_seconds(metrics)


def test_class_with_a_single_image(tmp_path, capsys):
    root = folder_tree(tmp_path / "data", {"a": 1, "b": 4, "c": 4, "d": 4})
    out = tmp_path / "out"
    code, _, err = run(FOLDER + ["--data-root", root, "--out", out], capsys)
    assert_one_error_line(code, err, "1 class(es) with a single image", "images_per_class=2",
                          "sampler='random'", "training set: 5 images, 2 classes")
    assert not out.exists()
    # What the message suggests works: random batches need no pairs.
    code, _, err = run(FOLDER + ["--data-root", root, "--out", out, "--set", "sampler=random"], capsys)
    assert code == 0, err


# ---------------------------------------------------------------- faults


def _loss_failing_at(monkeypatch, step_number, failure):
    """Make the `step_number`-th loss (1-based, over all epochs) be `failure` (a value, or an exception to raise)."""
    calls, loss = [], training._loss

    def failing(*args):
        calls.append(1)
        if len(calls) != step_number:
            return loss(*args)
        if isinstance(failure, BaseException):
            raise failure
        return loss(*args) + failure  # still on the graph, as a real loss that overflowed would be

    monkeypatch.setattr(training, "_loss", failing)


def test_inf_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tiny_cli, tmp_path, capsys,
                                                                               monkeypatch):
    _loss_failing_at(monkeypatch, 4 + 1, float("inf"))  # epoch 2, step 1
    out = tmp_path / "run"
    code, _, err = run(TINY + ["--out", out], capsys)
    assert_one_error_line(code, err, "loss became inf at epoch 2, step 1", f"{out / 'checkpoint.pt'} keeps the last "
                          "good epoch", "Lower the learning rates")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (out / "metrics.json").exists()


def test_failure_before_the_first_checkpoint_leaves_no_folder(tiny_cli, tmp_path, capsys, monkeypatch):
    _loss_failing_at(monkeypatch, 1, float("nan"))
    out = tmp_path / "new" / "run"
    code, _, err = run(TINY + ["--out", out], capsys)
    assert_one_error_line(code, err, "loss became nan at epoch 1, step 1")
    assert not (tmp_path / "new").exists()


def test_checkpoint_write_failing_halfway_keeps_the_previous_checkpoint(tiny_cli, reference, tmp_path, capsys,
                                                                        monkeypatch):
    save, calls = torch.save, []

    def save_then_fail_on_the_second(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) != 2:
            return save(obj, path, *args, **kwargs)
        data = io.BytesIO()
        save(obj, data)
        with open(path, "wb") as f:
            f.write(data.getvalue()[: len(data.getvalue()) // 2])  # half of it, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail_on_the_second)
    out = tmp_path / "run"
    code, _, err = run(TINY + ["--out", out], capsys)
    assert_one_error_line(code, err, "No space left on device")
    assert len(calls) == 2
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]["steps"]) == 4
    with pytest.raises(Exception):
        torch.load(calls[1], weights_only=True)  # the half-written file (a temporary one) is not loadable

    monkeypatch.setattr(torch, "save", save)
    code, _, err = run(TINY + ["--out", out], capsys)
    assert code == 0, err
    assert_same_run(out, reference)


# ---------------------------------------------------------------- interruption


def test_interrupted_run_resumes_to_the_same_result(tiny_cli, reference, tmp_path, capsys, monkeypatch):
    loss = training._loss
    _loss_failing_at(monkeypatch, 4 + 2, KeyboardInterrupt())  # Ctrl-C in epoch 2, step 2
    out = tmp_path / "run"
    code, stdout, err = run(TINY + ["--out", out], capsys)
    assert code == 130 and stdout == ""
    assert err == (f"error: interrupted; {out.as_posix()}/checkpoint.pt keeps the last finished epoch, if any: "
                   "run the same command again to go on\n")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and not (out / "metrics.json").exists()

    monkeypatch.setattr(training, "_loss", loss)
    code, _, err = run(TINY + ["--out", out], capsys)
    assert code == 0, err
    assert_same_run(out, reference)


def test_same_seed_same_files_apart_from_timings(tiny_cli, reference, tmp_path, capsys):
    code, _, err = run(TINY + ["--out", tmp_path], capsys)
    assert code == 0, err
    assert_same_run(tmp_path, reference)
    assert read(tmp_path, "metrics.json")["seconds"] > 0

