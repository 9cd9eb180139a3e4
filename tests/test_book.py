"""The book: chapters are canonical py:percent with a literal parameters cell, execute at size 'ci'
(solutions included), pass nbval in lax mode, and write the results they promise."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from pnca_utils.book import (ChapterError, ParameterError, chapter_parameters, chapters, check_parameters,
                              execute_chapter, main, parse_parameters, run_book, to_notebook)

CHAPTERS = chapters()
IDS = [path.stem for path in CHAPTERS]
PARAMETERS = {"size", "seed", "out_dir", "solutions"}  # every chapter takes these; the runner injects three
RESULT_KEYS = {  # keys of results/NN.json, as each chapter documents them
    "00": {"R@1", "R@2", "MAP@R", "RP", "NMI", "F1"},
    "01": {"size", "untrained", "proxynca", "nca", "tsne_r1"},
    "02": {"size", "proxynca", "assignment", "profiles"},
    "03": {"size", "temperatures", "sweep", "untrained", "gaps", "tsne_r1", "paper_delta", "our_delta"},
    "04": {"size", "max", "avg", "untrained", "activation"},
    "05": {"size", "split", "gradients", "proxy_lr_sweep", "interaction", "untrained"},
    "06": {"size", "full", "balanced", "layernorm", "image_size", "table"},
    "07": {"size", "full", "ablation", "ablation_longer", "source"},
    "08": {"size", "methods", "table", "source"},
    "09": {"size", "presets", "table", "runs", "trained"},
}
# The data cache of `make book`: $PNCA_DATA_DIR as set when pytest started (this module is imported at
# collection, before conftest's session fixture points the variable at a temporary folder), else data/.
BOOK_DATA_DIR = os.environ.get("PNCA_DATA_DIR")


def _cells(nb):
    return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


def _without_version(text: str) -> str:
    """The text minus the header line naming the jupytext version that last wrote it."""
    return "\n".join(line for line in text.splitlines() if "jupytext_version:" not in line)


def test_book_has_chapters():
    assert CHAPTERS and CHAPTERS[0].name.startswith("00_")
    assert set(RESULT_KEYS) == {path.name[:2] for path in CHAPTERS}, "declare each chapter's result keys"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_round_trips_through_jupytext(path):
    text = path.read_text()
    nb = jupytext.reads(text, fmt="py:percent")
    again = jupytext.writes(nb, fmt="py:percent")
    assert _cells(jupytext.reads(again, fmt="py:percent")) == _cells(nb)
    assert _without_version(again) == _without_version(text), "not in canonical py:percent form"
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_parameters_cell_is_first_and_literal(path):
    nb = to_notebook(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "exactly one parameters cell, the first code cell"
    names = set()
    for statement in ast.parse(tagged[0].source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.unparse(statement)
        assert isinstance(statement.targets[0], ast.Name), ast.unparse(statement)
        ast.literal_eval(statement.value)  # raises unless a literal
        names.add(statement.targets[0].id)
    assert PARAMETERS <= names


@pytest.fixture
def book_cache(monkeypatch):
    """Chapters executed here use `make book`'s data cache (the kernels inherit this environment), so the
    embedded set and the pretrained CNN are built once per checkout, not once per test session."""
    if BOOK_DATA_DIR is None:
        monkeypatch.delenv("PNCA_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("PNCA_DATA_DIR", BOOK_DATA_DIR)


def test_chapters_share_the_books_data_cache(book_cache, data_dir):
    from pnca_utils.data.embedded import default_cache

    expected = Path(BOOK_DATA_DIR) if BOOK_DATA_DIR else Path(__file__).resolve().parents[1] / "data"
    assert default_cache() == expected / "embedded" != data_dir / "embedded"


@pytest.mark.book
@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_executes_and_passes_nbval(path, tmp_path, book_cache):
    executed = execute_chapter(path, tmp_path, {"size": "ci", "solutions": True})
    results = json.loads((tmp_path / "results" / f"{path.name[:2]}.json").read_text())
    assert RESULT_KEYS[path.name[:2]] <= set(results)
    assert any((tmp_path / "figures").glob(f"{path.name[:2]}_*.png"))
    # nbval re-runs the executed notebook (its injected parameters included) and compares the
    # outputs of the cells marked NBVAL_CHECK_OUTPUT.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                          "--nbval-current-env", str(executed)],
                         cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]



@pytest.mark.book
def test_chapter_07_recomputes_a_small_grid_without_a_table(tmp_path, book_cache):
    """The committed results/embedded table is read by default; with no table, a ci-size grid is trained."""
    path = next(p for p in CHAPTERS if p.name.startswith("07"))
    execute_chapter(path, tmp_path, {"size": "ci", "ablation_dir": str(tmp_path / "no-table")})
    results = json.loads((tmp_path / "results" / "07.json").read_text())
    assert results["source"] == "recomputed at size ci"
    assert {row["variant"] for row in results["ablation"]} == {"ProxyNCA++", "− low temperature", "ProxyNCA"}
    assert results["ablation_longer"] is None  # a ci table is not set beside the committed 8-epoch grid

CHAPTER_TEMPLATE = """\
# %% tags=["parameters"]
size = "default"
out_dir = "build"

# %%
{body}
"""


@pytest.mark.book
def test_run_book_uses_this_interpreter_and_stops_at_first_failure(tmp_path, capsys):
    book = tmp_path / "book"
    book.mkdir()
    bodies = {"01_ok": "import sys\nprint(sys.executable, size)",
              "02_broken": "raise ValueError('boom')",
              "03_never": "print('not reached')"}
    for name, body in bodies.items():
        (book / f"{name}.py").write_text(CHAPTER_TEMPLATE.format(body=body))
    with pytest.raises(ChapterError, match=r"02_broken .*ValueError: boom"):
        run_book("ci", tmp_path / "out", book_dir=book)
    ok = nbformat.read(tmp_path / "out" / "01_ok.ipynb", as_version=4)
    assert ok.cells[-1].outputs[0].text.split() == [sys.executable, "ci"]
    assert not (tmp_path / "out" / "03_never.ipynb").exists()
    assert "02_broken" in capsys.readouterr().out


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_accepts_the_runners_parameters(path):
    check_parameters(path, {"size": "ci", "solutions": True, "out_dir": "/tmp/out", "seed": 1})
    defaults = {"size": "default", "seed": 0, "out_dir": "build", "solutions": False}
    assert defaults.items() <= chapter_parameters(path).items()


@pytest.mark.parametrize("parameters, match", [
    ({"size": 3}, r"size=3 is of type int; its parameters cell has size = 'default', of type str"),
    ({"seed": "a"}, r"seed='a' is of type str; .* seed = 0, of type int"),
    ({"seed": 1.5}, r"seed=1.5 is of type float"),
    ({"solutions": 1}, r"solutions=1 is of type int; .* of type bool"),
    ({"seed": True}, r"seed=True is of type bool"),
    ({"size": "huge"}, r"size='huge' is not one of ci, default, full"),
    ({"sise": "ci"}, r"has no parameter 'sise'; its parameters are .*size"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_wrong_parameter_is_rejected_before_anything_runs(parameters, match, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match=match):
        execute_chapter(CHAPTERS[0], out, parameters)
    assert not out.exists()


def test_parameters_with_a_none_default_take_any_value(tmp_path):
    chapter = tmp_path / "01_x.py"
    chapter.write_text(CHAPTER_TEMPLATE.replace('out_dir = "build"', 'out_dir = "build"\nepochs = None\nlr = 0.1')
                       .format(body="print(size)"))
    check_parameters(chapter, {"epochs": 3, "lr": 1})  # an int where the cell has a float is fine too
    check_parameters(chapter, {"epochs": None, "lr": 2e-2})
    with pytest.raises(ParameterError, match="lr='fast'"):
        check_parameters(chapter, {"lr": "fast"})


def test_run_book_checks_every_chapter_before_running_one(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    (book / "01_first.py").write_text(CHAPTER_TEMPLATE.format(body="print(size)"))
    (book / "02_seeded.py").write_text(CHAPTER_TEMPLATE.replace('out_dir = "build"', 'out_dir = "build"\nseed = 0')
                                       .format(body="print(seed)"))
    with pytest.raises(ParameterError, match="01_first has no parameter 'seed'"):
        run_book("ci", tmp_path / "out", book_dir=book, parameters={"seed": 1})
    assert not (tmp_path / "out").exists()


def test_parameter_option_is_parsed_and_checked(tmp_path, capsys):
    assert parse_parameters(["seed=1", "lr=2e-2", "dataset=cub", "data_root=None", "solutions=True", "name='a b'"]) == {
        "seed": 1, "lr": 2e-2, "dataset": "cub", "data_root": None, "solutions": True, "name": "a b"}
    out = tmp_path / "out"
    assert main(["--only", IDS[0][:2], "-p", "seed=a", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: chapter ") and "seed='a' is of type str" in err and err.count("\n") == 1, err
    assert main(["--only", IDS[0][:2], "-p", "seed", "--out", str(out)]) == 1
    assert "-p expects NAME=VALUE" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_chapter_number_is_one_error_line(capsys):
    assert main(["--only", "99", "--out", "unused"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "99" in err and "\n" not in err


def test_site_needs_executed_chapters(tmp_path, capsys):
    assert main(["--site", "--out", str(tmp_path)]) == 1
    assert "make book" in capsys.readouterr().err


def test_site_renders_an_index(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 00 · A title\n\nText $x^2$.")])
    nbformat.write(nb, tmp_path / "00_intro.ipynb")
    assert main(["--site", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert 'href="00_intro.html"' in page and "00 · A title" in page
    assert (tmp_path / "site" / "00_intro.html").stat().st_size > 0


def test_a_whole_book_records_its_wall_time(tmp_path, monkeypatch):
    import pnca_utils.book as book

    (tmp_path / "runs" / "old-run").mkdir(parents=True)
    (tmp_path / "runs" / "old-run" / "metrics.json").write_text("{}")
    monkeypatch.setattr(book, "run_book", lambda *a, **k: {"00_a": 1.25, "01_b": 2.5})
    assert main(["--size", "ci", "--out", str(tmp_path), "--only", "00"]) == 0
    assert not (tmp_path / "book_time.json").exists()  # one chapter is not the book's time
    assert main(["--size", "ci", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "book_time.json").read_text())
    assert record["size"] == "ci" and record["total_seconds"] == 3.8 and record["chapters"]["01_b"] == 2.5
    assert record["finished_runs_before"] == 1 and record["cpus"] == os.cpu_count()
