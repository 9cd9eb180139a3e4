"""Run the book headless: every chapter `book/NN_*.py` (py:percent) becomes a notebook executed by papermill.

    python -m pnca_utils.book [--size ci|default|full] [--out build] [--only NN ...] [--solutions]
                              [-p NAME=VALUE ...] [--site]

Executed notebooks go to OUT/NN_name.ipynb; chapters write their figures to OUT/figures/ and their
numbers to OUT/results/NN.json. `--site` renders the executed notebooks as HTML in OUT/site/ instead.

Parameters injected into a chapter are checked against the literals of its `parameters` cell before
anything runs: an unknown name, or a value of another type than the cell's (an int where the cell
has `size = "default"`), is a one-line error. A parameter whose default is None takes any value.

The kernel is always the interpreter running this module: a kernel spec for `sys.executable` is
written to a temporary folder put first on JUPYTER_PATH while a chapter runs, so neither a user's
kernels nor a missing `ipykernel install` can change which Python executes the book.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .config import SIZES
from .paths import checkout

BOOK_DIR = (checkout() or Path.cwd()) / "book"  # installed: the book/ folder of the working directory
KERNEL_NAME = "pnca-book"
KERNEL_ENV = {
    "TQDM_DISABLE": "1",  # tqdm >= 4.66 reads TQDM_<ARG> as defaults: no progress bars in notebook outputs
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silences debugpy's frozen-modules warning on Python 3.11+
}


class BookError(RuntimeError):
    """The book cannot be run or rendered; the message says why in one line."""


class ChapterError(BookError):
    """A chapter failed to execute; the message names it in one line."""


class ParameterError(BookError):
    """A parameter given to a chapter is unknown to it or of the wrong type; nothing was executed."""


def chapters(book_dir: Path | str = BOOK_DIR) -> list[Path]:
    """The chapter sources `NN_*.py` of `book_dir`, in order."""
    return sorted(Path(book_dir).glob("[0-9][0-9]_*.py"))


def to_notebook(path: Path | str):
    """The chapter at `path` (py:percent) as an nbformat notebook without outputs."""
    import jupytext

    return jupytext.read(path, fmt="py:percent")


def chapter_parameters(path: Path | str) -> dict:
    """The defaults of a chapter's `parameters` cell, {name: literal value}."""
    path = Path(path)
    cell = next((c for c in to_notebook(path).cells
                 if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise ParameterError(f"chapter {path.stem} has no code cell tagged 'parameters'")
    defaults = {}
    for statement in ast.parse(cell.source).body:
        targets = getattr(statement, "targets", [])
        if not (isinstance(statement, ast.Assign) and len(targets) == 1 and isinstance(targets[0], ast.Name)):
            continue
        try:
            defaults[targets[0].id] = ast.literal_eval(statement.value)
        except ValueError:
            raise ParameterError(f"chapter {path.stem}: parameter {targets[0].id} is not a literal "
                                 f"({ast.unparse(statement.value)})") from None
    return defaults


def _same_kind(default, value) -> bool:
    """Whether `value` may replace `default`: same type; an int for a float; anything for None."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def check_parameters(path: Path | str, parameters: dict) -> None:
    """Raise ParameterError unless every parameter is one of the chapter's, with a value of its default's type."""
    path = Path(path)
    defaults = chapter_parameters(path)
    for name, value in parameters.items():
        if name not in defaults:
            raise ParameterError(f"chapter {path.stem} has no parameter {name!r}; its parameters are "
                                 f"{', '.join(defaults)}")
        default = defaults[name]
        if not _same_kind(default, value):
            raise ParameterError(f"chapter {path.stem}: parameter {name}={value!r} is of type {type(value).__name__}; "
                                 f"its parameters cell has {name} = {default!r}, of type {type(default).__name__}")
    if "size" in parameters and isinstance(defaults.get("size"), str) and parameters["size"] not in SIZES:
        raise ParameterError(f"chapter {path.stem}: size={parameters['size']!r} is not one of {', '.join(SIZES)}")


@contextmanager
def private_kernel() -> Iterator[str]:
    """Yield the name of a kernel spec running `sys.executable`, visible through JUPYTER_PATH meanwhile."""
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python {sys.version_info.major}.{sys.version_info.minor} (pnca-book)",
            "language": "python", "env": KERNEL_ENV, "metadata": {"supported_encryption": ["curve"]}}
    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="pnca-kernel-") as tmp:
        folder = Path(tmp) / "kernels" / KERNEL_NAME
        folder.mkdir(parents=True)
        (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
        os.environ["JUPYTER_PATH"] = os.pathsep.join([tmp] + ([old] if old else []))
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def _client_config():
    """Kernel-manager settings: CurveZMQ encryption of the kernel's sockets where pyzmq supports it."""
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}} if zmq.has("curve") else {})


def _first_line(text) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def execute_chapter(path: Path | str, out_dir: Path | str, parameters: dict | None = None) -> Path:
    """Execute one chapter into `out_dir`/NN_name.ipynb and return that path; raise ChapterError if it fails.

    `out_dir` is injected as the chapter's `out_dir` parameter (absolute) unless `parameters` sets it;
    the kernel runs in `out_dir`. Parameters are checked first (`check_parameters`): a wrong one
    raises ParameterError before anything is executed or written.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path, out_dir = Path(path), Path(out_dir).resolve()
    parameters = {"out_dir": str(out_dir), **(parameters or {})}
    check_parameters(path, parameters)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{path.stem}.ipynb"
    try:
        with private_kernel() as kernel:
            papermill.execute_notebook(to_notebook(path), str(output), parameters=parameters, kernel_name=kernel,
                                       language="python", progress_bar=False, cwd=str(out_dir),
                                       config=_client_config())
    except PapermillExecutionError as err:
        raise ChapterError(f"chapter {path.stem} failed in cell [{err.exec_count}]: {err.ename}: "
                           f"{_first_line(err.evalue)} (see {output})") from err
    except Exception as err:  # kernel died, timed out, could not start, bad notebook
        raise ChapterError(f"chapter {path.stem} failed: {type(err).__name__}: {_first_line(err)}") from err
    return output


def run_book(size: str = "default", out_dir: Path | str = "build", only: list[str] | None = None,
             solutions: bool = False, book_dir: Path | str = BOOK_DIR,
             parameters: dict | None = None) -> dict[str, float]:
    """Execute the chapters in order (those numbered in `only`, if given); return seconds per chapter.

    `parameters` go to every chapter, after `size` (and `solutions`, when True). Stops at the first
    failing chapter by raising ChapterError; raises BookError if a chapter is missing, and
    ParameterError, before executing any chapter, if a parameter does not fit one of them.
    """
    found = chapters(book_dir)
    only = None if only is None else [n.zfill(2) for n in only]
    selected = [p for p in found if only is None or p.name[:2] in only]
    missing = sorted(set(only or ()) - {p.name[:2] for p in selected})
    if not found or missing:
        raise BookError(f"no chapter {'numbered ' + ', '.join(missing) if missing else 'NN_*.py'} in {book_dir}")
    parameters = {"size": size, **({"solutions": True} if solutions else {}), **(parameters or {})}
    for path in selected:
        check_parameters(path, {"out_dir": str(out_dir), **parameters})
    seconds = {}
    for n, path in enumerate(selected, 1):
        print(f"[{n}/{len(selected)}] {path.stem} ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            execute_chapter(path, out_dir, parameters)
        finally:
            seconds[path.stem] = time.perf_counter() - start
            print(f"{seconds[path.stem]:.1f} s", flush=True)
    return seconds


REFERENCE_DIR = BOOK_DIR / "reference"  # executed chapters whose checked outputs nbval compares with
CHECKED = "NBVAL_CHECK_OUTPUT"  # a cell whose outputs nbval compares (in --nbval-lax mode)
REFERENCE_OUT_DIR = "build/nbval"  # the out_dir a reference names: relative, so the project's build/


def write_references(only: list[str] | None = None, book_dir: Path | str = BOOK_DIR,
                     reference_dir: Path | str | None = None) -> list[Path]:
    """Execute the chapters at size 'ci' (solutions on) and keep each as reference_dir/NN_name.ipynb.

    A reference keeps every cell, and the outputs of the cells marked NBVAL_CHECK_OUTPUT only: the
    numbers `pytest --nbval-lax` compares when it executes the reference again. Regenerate with
    `make references` when a chapter changes, and review the diff like code: a changed output is a
    changed result.
    """
    import tempfile

    import nbformat

    reference_dir = Path(reference_dir) if reference_dir is not None else Path(book_dir) / "reference"
    reference_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        run_book("ci", tmp, only, solutions=True, book_dir=book_dir)
        for executed in sorted(Path(tmp).glob("[0-9][0-9]_*.ipynb")):
            nb = as_reference(nbformat.read(executed, as_version=4))
            nbformat.write(nb, reference_dir / executed.name)
            written.append(reference_dir / executed.name)
    return written


def as_reference(nb, out_dir: str = REFERENCE_OUT_DIR):
    """An executed notebook made a reference: outputs kept only where checked (those cells numbered by their
    place among the code cells), run-specific metadata dropped, and papermill's injected `out_dir` set to `out_dir`."""
    nb.metadata.pop("papermill", None)
    code_cells = 0
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        code_cells += 1
        # nbval fails a cell that has outputs but no execution count ("unrun reference cell"): a checked
        # cell is numbered by its place among the code cells, so the number is the same on every run
        cell.execution_count = code_cells if CHECKED in cell.source else None
        if CHECKED not in cell.source:
            cell.outputs = []
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = cell.execution_count
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = "\n".join(f"out_dir = {out_dir!r}" if line.startswith("out_dir = ") else line
                                    for line in cell.source.splitlines())
    return nb


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pnca_utils.book", description="Execute the book's chapters headless.")
    p.add_argument("--size", default="default", choices=SIZES, help="compute budget of every chapter")
    p.add_argument("--out", default="build", help="folder for executed notebooks, figures/ and results/")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these chapters, e.g. --only 00 03")
    p.add_argument("--solutions", action="store_true", help="also execute the exercises' solutions")
    p.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                   help="inject a parameter into every chapter (repeatable); VALUE is a Python literal, "
                        "else a string, e.g. -p seed=1 -p dataset=cub")
    p.add_argument("--site", action="store_true", help="render the executed notebooks in --out as HTML only")
    p.add_argument("--references", action="store_true",
                   help="execute the chapters at size ci and write book/reference/, what nbval compares with")
    return p


def parse_parameters(pairs: list[str]) -> dict:
    """['seed=1', 'dataset=cub'] -> {'seed': 1, 'dataset': 'cub'}: values are Python literals, else strings."""
    parameters = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ParameterError(f"-p expects NAME=VALUE, got {pair!r}")
        try:
            parameters[name.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            parameters[name.strip()] = text.strip()
    return parameters


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.site:
            from .site import SiteError, render_site

            try:
                print(f"site: {render_site(args.out)}")
            except SiteError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            return 0
        if args.references:
            written = write_references(args.only)
            print(f"{len(written)} reference notebook(s) in {REFERENCE_DIR}")
            return 0
        cached = len(list(Path(args.out, "runs").glob("*/metrics.json")))
        seconds = run_book(args.size, args.out, args.only, args.solutions, parameters=parse_parameters(args.parameter))
    except BookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"total {sum(seconds.values()):.1f} s for {len(seconds)} chapter(s); notebooks in {args.out}/")
    if args.only is None:
        write_book_time(Path(args.out) / "book_time.json", args.size, seconds, cached)
    return 0


def write_book_time(path: Path, size: str, seconds: dict, cached_runs: int) -> None:
    """Record a whole book's wall time: per chapter, in all, and on what code and machine (benchmarks/run.py
    copies it; results/book_time.json is the committed measurement)."""
    import datetime

    from pnca_utils.experiments import provenance

    path.write_text(json.dumps({
        "size": size, "total_seconds": round(sum(seconds.values()), 1),
        "chapters": {name: round(value, 1) for name, value in seconds.items()},
        "finished_runs_before": cached_runs,  # > 0: some training was reused from an earlier build
        "load_average_end": list(os.getloadavg()), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **provenance.record()}, indent=2) + "\n")  # the record holds python's version and the cpus


if __name__ == "__main__":
    sys.exit(main())
