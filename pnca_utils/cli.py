"""Command line: `python -m pnca_utils train|evaluate|tune|ablate ...`, the same code the chapters call."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .config import (DATASETS, METHOD_PRESETS, PAPER_SIZE, SIZE_PRESETS, Config, ConfigError, make_config,
                     parse_overrides)
from .data import DataError, load_data
from .experiments.parallel import SCHEDULER_ENV, RunsFailed
from .training import TrainingError


class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one `error: ...` line, like every other error of the CLI."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} (default: embedded; evaluate: the checkpoint's)")
    p.add_argument("--data-root", help="folder holding a real data set (nothing is downloaded; "
                                       "evaluate: default the checkpoint's)")
    p.add_argument("--out", required=True, help="output folder for metrics.json (and history, checkpoint)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's, cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="real data sets: leave unreadable image files out (and report how many) instead of stopping")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="proxynca++", choices=list(METHOD_PRESETS), metavar="PRESET",
                   help=f"one of {', '.join(METHOD_PRESETS)}")
    p.add_argument("--size", default="default", choices=[*SIZE_PRESETS, PAPER_SIZE], metavar="SIZE",
                   help=f"one of {', '.join(SIZE_PRESETS)}, or {PAPER_SIZE} (a real data set's published settings)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)


def _grid_options(p: argparse.ArgumentParser) -> None:
    """Where a grid's runs train: local processes or a Dask scheduler (see pnca_utils.experiments.parallel)."""
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many runs at once in local processes (each on --threads threads)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="send the runs to a running Dask scheduler, e.g. tcp://10.0.0.1:8786 "
                        f"(default: ${SCHEDULER_ENV} if set); workers need the data and the runs folder")
    p.add_argument("--threads", type=int, help="CPU threads per run (default 1); "
                                               "a CPU run's numbers depend on it")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="python -m pnca_utils", description=__doc__)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a method and write metrics.json")
    _common(train)
    _run_options(train)
    tune = sub.add_parser("tune", help="grid search on held-out training classes; writes search.csv, summary.md")
    _common(tune)
    _run_options(tune)
    tune.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                      help="values to try for a config field (repeatable; the grid is their product)")
    tune.add_argument("--seeds", type=int, default=1, help="seeds per grid point (0, 1, ...)")
    _grid_options(tune)
    ablate = sub.add_parser("ablate", help="seeded ablation grid; writes runs.csv, ablation.csv, ablation.md")
    _common(ablate)
    ablate.add_argument("--grid", default="proxynca++", help="proxynca++ (the paper's ablations) or hdml")
    ablate.add_argument("--size", default="default", choices=[*SIZE_PRESETS, PAPER_SIZE], metavar="SIZE",
                        help=f"one of {', '.join(SIZE_PRESETS)}, {PAPER_SIZE}")
    ablate.add_argument("--seeds", type=int, default=3, help="seeds per variant (0, 1, ...)")
    ablate.add_argument("--variant", action="append", metavar="NAME", help="only these variants (repeatable)")
    ablate.add_argument("--runs", help="folder of the cached runs (default: OUT/runs)")
    ablate.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field of every run")
    ablate.add_argument("--epochs", type=int)
    _grid_options(ablate)
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint and write metrics.json")
    _common(ev)
    ev.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train")
    # listed for --help; main hands their arguments to the book runner (python -m pnca_utils.book)
    sub.add_parser("book", add_help=False, help="execute the book's chapters headless (see: book --help)")
    sub.add_parser("site", add_help=False, help="render the executed chapters as a site (see: site --help)")
    return top


BOOK_COMMANDS = {"book": [], "site": ["--site"]}  # the book runner's arguments each command starts with


def _overrides(args) -> dict:
    overrides = parse_overrides(args.set)
    for key in ("epochs", "seed", "device", "dataset", "data_root", "threads"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if getattr(args, "skip_bad_images", False):
        overrides["skip_bad_images"] = True
    return overrides


def _load(config: Config):
    """The config's data set, read (and its images checked) before anything is written; reports skipped images."""
    data = load_data(config.dataset, config.data_root, config.image_size, skip_bad_images=config.skip_bad_images)
    if data.skipped:
        print(f"warning: left out {len(data.skipped)} unreadable image(s) of the {config.dataset} data set, "
              f"first {data.skipped[0]}", file=sys.stderr)
    return data


def _train(args) -> dict:
    from .training import fit

    config = make_config(args.preset, args.size, **_overrides(args))
    return fit(config, _load(config), out_dir=args.out, progress=not args.quiet).metrics


def _tune(args) -> dict:
    from .experiments.provenance import record
    from .experiments.tuning import grid_search, parse_grid, to_markdown

    summary = grid_search(args.preset, args.size, parse_grid(args.grid), args.seeds, out=args.out,
                          progress=not args.quiet, jobs=args.jobs, scheduler=args.scheduler, **_overrides(args))
    (Path(args.out) / "summary.md").write_text(to_markdown(summary))
    (Path(args.out) / "provenance.json").write_text(json.dumps({"argv": sys.argv[1:], **record()}, indent=2))
    best = summary.iloc[0]
    return {"best val R@1": float(best["mean"])}


def _ablate(args) -> dict:
    from .experiments.ablation import grid, run_grid, select, write_summary

    variants = select(grid(args.grid, args.dataset or "embedded"), args.variant)
    runs = run_grid(variants, args.size, args.seeds, args.out, args.runs, progress=not args.quiet,
                    jobs=args.jobs, scheduler=args.scheduler, **_overrides(args))
    summary = write_summary(runs, variants, args.out)
    return {f"{row['variant']} R@1": row["R@1 mean"] for _, row in summary.iterrows()}


def _evaluate(args) -> dict:
    import torch

    from .training import _write_json, build, evaluate_model, prepare

    path = Path(args.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first (python -m pnca_utils train)")
    started = time.perf_counter()
    given = {"dataset": args.dataset, "data_root": args.data_root, "device": args.device,
             "skip_bad_images": args.skip_bad_images or None}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = Config(**{**state["config"], "weights": None, **{k: v for k, v in given.items() if v is not None}})
    except Exception as err:  # not a checkpoint, or a damaged one
        raise TrainingError(f"cannot read checkpoint {path} ({type(err).__name__}: {err}); train again") from None
    config.validate()
    train_data, eval_data = prepare(config, _load(config))  # the split the run was evaluated on
    model, _ = build(config, train_data.num_channels, train_data.num_train_classes)
    model.load_state_dict(state["model"])
    metrics = evaluate_model(model, eval_data, config.device, config.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json({**metrics, "config": config.to_dict(), "seconds": time.perf_counter() - started}, out / "metrics.json")
    return metrics


def _missing_folders(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


# What an interrupted command keeps (OUT: its --out folder).
KEPT = {"train": "{out}/checkpoint.pt keeps the last finished epoch, if any",
        "tune": "{out}/search.csv keeps the finished runs", "ablate": "the runs folder keeps the finished runs",
        "evaluate": "nothing was written"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in BOOK_COMMANDS:
        from .book import main as run_book_command

        return run_book_command(BOOK_COMMANDS[argv[0]] + argv[1:])
    args = parser().parse_args(argv)
    created = _missing_folders(Path(args.out).absolute())
    try:
        metrics = {"train": _train, "evaluate": _evaluate, "tune": _tune, "ablate": _ablate}[args.command](args)
    except (ConfigError, DataError, TrainingError, RunsFailed, OSError, KeyboardInterrupt) as err:
        for folder in created:  # folders this command made and left empty (files written are kept)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(err, KeyboardInterrupt):
            kept = KEPT[args.command].format(out=Path(args.out).as_posix())
            print(f"error: interrupted; {kept}: run the same command again to go on", file=sys.stderr)
            return 130
        if isinstance(err, RunsFailed):  # the others finished: one line per failed run, then exit 1
            print(f"error: {len(err.failures)} run(s) failed; the others are recorded, and running the same "
                  "command again retries only the failed ones:", file=sys.stderr)
            for failure in err.failures:
                print(f"  {failure}", file=sys.stderr)
            return 1
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)  # one line
        return 2 if isinstance(err, (ConfigError, DataError)) else 1  # bad input, or a run that failed
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        print(json.dumps({k: round(v, 2) for k, v in metrics.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
