"""The full-scale reproduction: the paper's runs found on disk, set beside the paper's table.

`find_runs` collects every finished ProxyNCA++ run on a real data set (a `metrics.json` written by
`fit`, the CLI's `train` or a run cache) under some folders; `results_table` puts their mean
Recall@K next to `paper.PROXYNCA_PP`, blank where either side has no number. `commands` spells out
the command lines that produce such runs, and `make_toy_folder` writes a small class-per-folder
image tree on which the same code path can be tried without a real data set.
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DATA_PRESETS, METHOD_PRESETS, PAPER_SIZE, RECALL_KS, make_config
from ..paper import PROXYNCA_PP

PAPER_DATASETS: tuple[str, ...] = tuple(DATA_PRESETS)
# Fields that say where or how a run was executed, not what it learned: never a difference from the preset.
RUN_FIELDS = frozenset({"data_root", "weights", "device", "num_workers", "seed", "eval_every"})
# ProxyNCA++'s switches a run must have to count as a run of the paper's method (proxy_lr: any fast rate).
_METHOD_FIELDS = {k: v for k, v in METHOD_PRESETS["proxynca++"].items() if k != "proxy_lr"}


def default_results_dir() -> Path:
    """The project's `results/` folder (`paths.results_dir`), where the command lines of `commands` write their runs."""
    from ..paths import results_dir

    return results_dir()


@dataclass
class FoundRun:
    """One finished run: where its metrics.json is, what it trained, what it measured."""

    path: Path
    dataset: str
    embedding_dim: int
    seed: int
    metrics: dict
    differences: dict = field(default_factory=dict)  # {field: (preset value, run value)}


def _jsonable(value):
    return json.loads(json.dumps(value))  # tuples become lists, as in a metrics.json


def is_paper_method(config: dict) -> bool:
    """True for a ProxyNCA++ run (all its switches, fast proxies) of a ResNet-50 on a real data set's test classes."""
    if config.get("dataset") not in PAPER_DATASETS or config.get("arch") != "resnet50":
        return False
    if config.get("eval_split", "test") != "test" or config.get("proxy_lr") is None:
        return False
    for key, value in _METHOD_FIELDS.items():
        ran = config.get(key)
        if isinstance(value, float) and isinstance(ran, (int, float)):
            if not math.isclose(ran, value, rel_tol=1e-9):
                return False
        elif ran != value:
            return False
    return True


def preset_differences(config: dict) -> dict:
    """{field: (paper preset's value, run's value)} for every setting in which `config` leaves the preset.

    The preset is `make_config("proxynca++", "paper", dataset=..., embedding_dim=...)` for the run's
    data set and embedding size; RUN_FIELDS are skipped, except that training without ImageNet
    weights (weights None) is a difference. A field the run does not record shows as '(absent)'.
    """
    dataset = config.get("dataset")
    if dataset not in PAPER_DATASETS:
        raise ValueError(f"dataset {dataset!r} has no paper preset; choose one of {', '.join(PAPER_DATASETS)}")
    preset = _jsonable(make_config("proxynca++", PAPER_SIZE, dataset=dataset, data_root="-", weights=None,
                                   embedding_dim=config.get("embedding_dim", 2048)).to_dict())
    ran = _jsonable(config)
    out = {}
    for key, value in preset.items():
        if key in RUN_FIELDS:
            continue
        mine = ran.get(key, "(absent)")
        same = (math.isclose(mine, value, rel_tol=1e-9) if isinstance(value, float) and isinstance(mine, (int, float))
                and not isinstance(mine, bool) else mine == value)
        if not same:
            out[key] = (value, mine)
    if "weights" in ran and ran["weights"] in (None, "auto"):
        out["weights"] = ("ImageNet weights", ran["weights"])
    return out


def find_runs(*roots: str | Path) -> list[FoundRun]:
    """Every finished ProxyNCA++ run on a real data set under `roots` (searched recursively), sorted.

    A run is a `metrics.json` holding a `config` (as `fit` writes it); unreadable files and runs of
    other methods, data sets or backbones are skipped. Missing roots are ignored.
    """
    seen, runs = set(), []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("metrics.json")):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                saved = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            config = saved.get("config") if isinstance(saved, dict) else None
            if not isinstance(config, dict) or not is_paper_method(config):
                continue
            metrics = {k: float(v) for k, v in saved.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds"}
            runs.append(FoundRun(path, config["dataset"], int(config.get("embedding_dim", 0)),
                                 int(config.get("seed", 0)), metrics, preset_differences(config)))
    order = {name: i for i, name in enumerate(PAPER_DATASETS)}
    return sorted(runs, key=lambda r: (order[r.dataset], -r.embedding_dim, r.seed, str(r.path)))


def runs_table(runs: list[FoundRun]) -> pd.DataFrame:
    """One row per run found: data set, dim, seed, R@1, where it is, and how it differs from the preset."""
    columns = ["dataset", "dim", "seed", "R@1", "differences from the preset", "metrics.json"]
    rows = [{"dataset": r.dataset, "dim": r.embedding_dim, "seed": r.seed, "R@1": r.metrics.get("R@1", np.nan),
             "differences from the preset": ", ".join(f"{k}={v[1]!r} (preset {v[0]!r})"
                                                      for k, v in r.differences.items()) or "none",
             "metrics.json": str(r.path)} for r in runs]
    return pd.DataFrame(rows, columns=columns)


def results_table(runs: list[FoundRun], paper: dict = PROXYNCA_PP, extra: tuple[str, ...] = ("MAP@R", "NMI")) -> pd.DataFrame:
    """The paper's table beside ours: one row per (data set, dim, metric), NaN where a side has no number.

    Rows: every (data set, dim) of `paper` and of `runs`; the metrics the paper gives, and, where
    runs exist, every Recall@K of the data set and the `extra` metrics. `ours` is the mean over the
    runs (seeds) of that data set and dim, `sd` their standard deviation (NaN for one run), `off
    preset` how many of those runs leave the paper preset in some setting (see `runs_table`).
    """
    order = {name: i for i, name in enumerate(PAPER_DATASETS)}
    keys = set(paper) | {(r.dataset, r.embedding_dim) for r in runs}
    rows = []
    for dataset, dim in sorted(keys, key=lambda k: (order.get(k[0], len(order)), -k[1])):
        published = paper.get((dataset, dim), {})
        found = [r for r in runs if (r.dataset, r.embedding_dim) == (dataset, dim)]
        metrics = list(published)
        if found:
            metrics = [f"R@{k}" for k in RECALL_KS[dataset]] + list(extra)
            metrics += [m for m in published if m not in metrics]
        for metric in metrics:
            values = [r.metrics[metric] for r in found if metric in r.metrics]
            ours = float(np.mean(values)) if values else np.nan
            rows.append({"dataset": dataset, "dim": dim, "metric": metric, "paper": published.get(metric, np.nan),
                         "ours": ours, "sd": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
                         "runs": len(values), "off preset": sum(bool(r.differences) for r in found if metric in r.metrics),
                         "ours - paper": ours - published.get(metric, np.nan)})
    return pd.DataFrame(rows, columns=["dataset", "dim", "metric", "paper", "ours", "sd", "runs", "off preset",
                                       "ours - paper"])


def table_records(table: pd.DataFrame) -> list[dict]:
    """`table` as JSON-ready records, NaN written as None."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v.item() if hasattr(v, "item") else v)
             for k, v in row.items()} for row in table.to_dict("records")]


def commands(dataset: str = "cub", data_root: str = "DATA_ROOT", weights: str = "IMAGENET1K_V1",
             out: str = "results", gpus: int = 4, seeds: int = 3) -> dict[str, str]:
    """The command lines that reproduce the paper's rows for `dataset` (run in the project folder).

    Keys: 'train' (2048-d, one GPU), 'train 512', 'more seeds', 'several GPUs' (torchrun),
    'evaluate', 'ablation', 'chapter' (this chapter through papermill, after `make notebooks`).
    """
    if dataset not in PAPER_DATASETS:
        raise ValueError(f"dataset {dataset!r} has no paper preset; choose one of {', '.join(PAPER_DATASETS)}")
    q = shlex.quote
    data = f"--dataset {dataset} --data-root {q(str(data_root))}"
    base = f"--preset proxynca++ --size {PAPER_SIZE} {data} --set weights={q(str(weights))} --device cuda"
    train = f"python -m pnca_utils train {base}"
    return {
        "train": f"{train} --out {out}/{dataset}",
        "train 512": f"{train} --set embedding_dim=512 --out {out}/{dataset}-512",
        "more seeds": f"for s in $(seq 1 {seeds - 1}); do {train} --seed $s --out {out}/{dataset}-seed$s; done",
        # its own folder: the same --out as 'train' would resume (or refuse) that run
        "several GPUs": f"torchrun --nproc_per_node {gpus} -m pnca_utils train {base} "
                        f"--out {out}/{dataset}-{gpus}gpus",
        "evaluate": f"python -m pnca_utils evaluate --checkpoint {out}/{dataset}/checkpoint.pt --device cuda "
                    f"--out {out}/{dataset}-eval",
        "ablation": f"python -m pnca_utils ablate --grid proxynca++ --size {PAPER_SIZE} {data} "
                    f"--set weights={q(str(weights))} --device cuda --seeds {seeds} "
                    f"--runs {out}/{dataset}/runs --out {out}/{dataset}/ablation",
        "chapter": f"make notebooks && .venv/bin/papermill build/notebooks/09_full_scale_reproduction.ipynb "
                   f"build/09_{dataset}.ipynb -p size {PAPER_SIZE} -p dataset {dataset} -p data_root {q(str(data_root))} "
                   f"-p weights {q(str(weights))} -p device cuda -p out_dir \"$PWD/build\"",
    }


# The standard splits' sizes (images): training classes, and what is embedded at each evaluation.
TRAIN_IMAGES = {"cub": 5_864, "cars": 8_054, "sop": 59_551, "inshop": 25_882}
EVAL_IMAGES = {"cub": 5_924, "cars": 8_131, "sop": 60_502, "inshop": 14_218 + 12_612}  # In-Shop: query + gallery
TRAIN_CLASSES = {"cub": 100, "cars": 98, "sop": 11_318, "inshop": 3_997}


def run_budget(dataset: str, embedding_dim: int | None = None) -> dict[str, float]:
    """How much one run of the paper's preset for `dataset` computes, from the preset and the split sizes.

    Returns steps per epoch (the class-balanced sampler draws len(train) // batch batches), epochs,
    total steps, training images seen, images embedded by the evaluations (every `eval_every`
    epochs and the last), and the number of values in the proxies (classes × D).
    """
    if dataset not in DATA_PRESETS:
        raise ValueError(f"dataset {dataset!r} has no paper preset; choose one of {', '.join(PAPER_DATASETS)}")
    preset = DATA_PRESETS[dataset]
    steps = TRAIN_IMAGES[dataset] // preset["batch_size"]
    evaluations = len(set(range(preset.get("eval_every", 1), preset["epochs"] + 1, preset.get("eval_every", 1)))
                      | {preset["epochs"]})
    return {"steps per epoch": steps, "epochs": preset["epochs"], "steps": steps * preset["epochs"],
            "images trained": steps * preset["epochs"] * preset["batch_size"],
            "images evaluated": evaluations * EVAL_IMAGES[dataset],
            "proxy values": TRAIN_CLASSES[dataset] * (embedding_dim or preset["embedding_dim"])}


def saved_activation_bytes(model, image_size: int, channels: int = 3) -> int:
    """Bytes that autograd keeps for the backward pass of one image through `model` (float32, train mode).

    Measured, not estimated: every tensor saved for backward is counted once (by its storage), through
    `torch.autograd.graph.saved_tensors_hooks`. A batch of B keeps about B times as much; mixed
    precision keeps most of it in 16 bits, about half.
    """
    import torch

    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(2, channels, image_size, image_size)).sum()  # 2 images: BatchNorm needs more than one
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(b for ptr, b in seen.items() if ptr not in parameters) // 2


_SHAPES = ("disc", "square", "triangle", "cross")
_COLOURS = {"red": (220, 50, 40), "green": (40, 170, 60), "blue": (50, 80, 220)}


def make_toy_folder(root: str | Path, num_classes: int = 12, images_per_class: int = 12, image_size: int = 48,
                    seed: int = 0) -> Path:
    """Write a made-up class-per-folder image tree (the 'folder' layout) under `root`; return `root`.

    A class is a shape (disc, square, triangle, cross) in a colour (red, green, blue), folder
    `NN_colour_shape`; each image draws it at a new size and place on a noisy grey background, with
    a jittered colour. The same arguments always write the same files (PNG). At most 12 classes.
    """
    from PIL import Image, ImageDraw

    kinds = [(c, s) for c in _COLOURS for s in _SHAPES]
    if not 2 <= num_classes <= len(kinds) or images_per_class < 1 or image_size < 16:
        raise ValueError(f"need 2 to {len(kinds)} classes, at least 1 image per class and image_size >= 16")
    rng = np.random.default_rng(seed)
    root = Path(root)
    for n, (colour, shape) in enumerate(kinds[:num_classes]):
        folder = root / f"{n:02d}_{colour}_{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            background = rng.normal(128, 30, (image_size, image_size, 1)).clip(0, 255).repeat(3, axis=2)
            image = Image.fromarray(background.astype(np.uint8))
            draw = ImageDraw.Draw(image)
            r = rng.uniform(0.18, 0.32) * image_size
            cx, cy = rng.uniform(r, image_size - r, size=2)
            fill = tuple(int(v) for v in np.clip(np.array(_COLOURS[colour]) + rng.normal(0, 20, 3), 0, 255))
            if shape == "disc":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "triangle":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            else:
                w = r / 3
                draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
                draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
            image.save(folder / f"{i:03d}.png")
    return root
