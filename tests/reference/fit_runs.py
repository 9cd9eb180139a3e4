"""Short runs of every method whose numbers `tests/test_training.py` compares with `fit_runs.json`.

The JSON was written by this file before `fit` was split into named parts, so the test shows
that the refactored loop trains bit for bit as the old one did. Regenerate it only when a change
is meant to change the numbers, and say so in the commit:
    .venv/bin/python tests/reference/fit_runs.py
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

REFERENCE = Path(__file__).with_name("fit_runs.json")
# name: (preset, overrides) on the tiny embedded set of tests/conftest.py, one CPU thread, from scratch; the
# paper's rates, stated, so that a change of the embedded set's validated rates (config.CALIBRATED) changes nothing
RUNS = {
    "proxynca++": ("proxynca++", dict(epochs=2, lr=4e-3, proxy_lr=4e2)),
    "proxynca++ warm-up, clipped, step schedule": ("proxynca++", dict(epochs=3, lr=4e-3, proxy_lr=4e2, warmup_epochs=1,
                                                                       grad_clip=1.0, lr_schedule="step",
                                                                       lr_milestones=(2,))),
    "proxynca": ("proxynca", dict(epochs=2, lr=4e-3)),
    "nca": ("nca", dict(epochs=2, lr=4e-3)),
    "triplet": ("triplet", dict(epochs=2, lr=4e-3)),
    "npair": ("npair", dict(epochs=2, lr=4e-3)),
    "hdml-triplet": ("hdml-triplet", dict(epochs=2, lr=4e-3)),
    "hdml-npair": ("hdml-npair", dict(epochs=2, lr=4e-3)),
}


def config(name: str):
    from pnca_utils.config import make_config

    preset, overrides = RUNS[name]
    per_class = 2 if preset.endswith("npair") else 4
    return make_config(preset, "ci", **{"weights": None, "batch_size": 16, "images_per_class": per_class,
                                        "embedding_dim": 16, "threads": 1, "eval_every": 1, **overrides})


def numbers(result) -> dict:
    """What the comparison looks at: every step's loss and gradient norms, every epoch's R@1, the final metrics."""
    steps = [{k: v for k, v in s.items() if k != "epoch"} for s in result.history["steps"]]
    epochs = [{k: v for k, v in e.items() if k not in ("seconds",)} for e in result.history["epochs"]]
    return {"steps": steps, "epochs": epochs, "metrics": result.metrics}


def tiny_data(cache_dir: Path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import TINY_SPEC
    from pnca_utils.data.embedded import load_embedded

    return load_embedded(image_size=32, spec=TINY_SPEC, cache_dir=cache_dir)


def main() -> None:
    from pnca_utils.training import fit

    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_data(Path(tmp))
        out = {name: numbers(fit(config(name), data, progress=False)) for name in RUNS}
    REFERENCE.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {REFERENCE} ({len(out)} runs)")


if __name__ == "__main__":
    main()
