"""The book: chapters are canonical py:percent with a literal parameters cell, execute at size 'ci'
(solutions included), pass nbval in lax mode, and write the results they promise."""
import ast
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

import pnca_utils
from pnca_utils.book import (CHECKED, REFERENCE_DIR, ChapterError, ParameterError, as_reference, chapter_parameters,
                              chapters, check_parameters, execute_chapter, main, parse_parameters, run_book,
                              to_notebook)

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
    "07": {"size", "full", "ablation", "budgets", "source"},
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


def _reference(path: Path):
    return nbformat.read(REFERENCE_DIR / f"{path.stem}.ipynb", as_version=4)


# nbval waits only 5 s for a finished cell's outputs to arrive; on a loaded 2-core machine they can arrive
# later, and the cell fails without a wrong number. This conftest, beside the notebook, gives them 120 s.
NBVAL_PATIENCE = """
import nbval.plugin

_init = nbval.plugin.IPyNbCell.__init__


def _patient_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.output_timeout = 120


nbval.plugin.IPyNbCell.__init__ = _patient_init
"""


def _nbval(notebook: Path, *options: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pytest --nbval-lax` on one notebook: every cell runs, the NBVAL_CHECK_OUTPUT cells' outputs are compared."""
    (notebook.parent / "conftest.py").write_text(NBVAL_PATIENCE)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", *options, str(notebook)], cwd=notebook.parent,
                          capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})


def _reference_in(path: Path, folder: Path) -> Path:
    """The chapter's reference notebook, copied into `folder` with its outputs going there too."""
    notebook = folder / f"{path.stem}.ipynb"
    nbformat.write(as_reference(_reference(path), out_dir=str(folder)), notebook)
    return notebook


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_reference_is_the_current_chapter(path):
    """book/reference/NN.ipynb holds the chapter's cells as they are now, plus papermill's injected parameters
    (size ci, solutions on) and the checked cells' stored outputs."""
    cells = [c for c in _reference(path).cells if "injected-parameters" not in c.metadata.get("tags", [])]
    stale = f"book/reference/{path.stem}.ipynb is stale: run `make references` and review its diff"
    assert [(c.cell_type, c.source) for c in cells] == [(c.cell_type, c.source) for c in to_notebook(path).cells], stale
    injected = next(c for c in _reference(path).cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'size = "ci"' in injected.source and "solutions = True" in injected.source
    checked = [c for c in cells if CHECKED in c.source]
    assert all(c.outputs for c in checked), "a checked cell without stored outputs compares nothing"
    assert not any(c.get("outputs") for c in cells if c.cell_type == "code" and CHECKED not in c.source)


@pytest.mark.book
@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_passes_nbval_against_its_reference(path, tmp_path, book_cache):
    """nbval executes the chapter's reference at size ci and compares each checked cell's output with the
    one stored in git; the run also writes the results and figures the chapter promises."""
    run = _nbval(_reference_in(path, tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    results = json.loads((tmp_path / "results" / f"{path.name[:2]}.json").read_text())
    assert RESULT_KEYS[path.name[:2]] <= set(results)
    assert any((tmp_path / "figures").glob(f"{path.name[:2]}_*.png"))


@pytest.mark.book
def test_nbval_catches_a_wrong_temperature_in_the_library(tmp_path, book_cache):
    """A copy of the package whose loss divides by sqrt(T) instead of T: chapter 03's checked cell (the
    library's probabilities and forces at T = 1, 1/3, 1/9, 1/27 on a hand-sized example) no longer matches."""
    package = tmp_path / "pkg" / "pnca_utils"
    shutil.copytree(Path(pnca_utils.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    losses = package / "losses.py"
    right = ".clamp_min(0.0) / temperature  #"  # ProxyNCA's logits: -||x - p||^2 / T
    assert losses.read_text().count(right) == 1, "the planted bug's line moved: update this test"
    losses.write_text(losses.read_text().replace(right, ".clamp_min(0.0) / temperature ** 0.5  #"))
    chapter = next(p for p in CHAPTERS if p.name.startswith("03"))
    (tmp_path / "run").mkdir()
    run = _nbval(_reference_in(chapter, tmp_path / "run"), "-x", env={"PYTHONPATH": str(package.parent)})
    assert run.returncode != 0 and "failed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
    assert "P(A)" in run.stdout  # the failure is the checked table's, shown with its expected and actual text


@pytest.mark.book
def test_chapter_07_recomputes_a_small_grid_without_a_table(tmp_path, book_cache):
    """The committed results/converged table is read by default; with no table, a ci-size grid is trained."""
    path = next(p for p in CHAPTERS if p.name.startswith("07"))
    execute_chapter(path, tmp_path, {"size": "ci", "ablation_dir": str(tmp_path / "no-table")})
    results = json.loads((tmp_path / "results" / "07.json").read_text())
    assert results["source"] == "recomputed at size ci"
    assert {row["variant"] for row in results["ablation"]} == {"ProxyNCA++", "− low temperature", "ProxyNCA"}
    assert set(results["budgets"]) == {"proxynca++-lr", "proxynca-lr"}  # the committed curves, read all the same

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


def _site_links(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)


def test_site_navigates_searches_and_works_offline(tmp_path):
    titles = ["00 · A title", "01 · Proxies", "02 · Temperature"]
    for n, title in enumerate(titles):
        injected = nbformat.v4.new_code_cell("out_dir = '/home/builder/build'", metadata={"tags": ["injected-parameters"]})
        cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nText $x^2$ about word{n}."), injected]
        nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / f"0{n}_page.ipynb")
    assert main(["--site", "--out", str(tmp_path)]) == 0
    site = tmp_path / "site"
    pages = {p.name: p.read_text() for p in site.glob("*.html")}
    assert set(pages) == {"index.html", "search.html", "00_page.html", "01_page.html", "02_page.html"}
    for name, page in pages.items():
        for link in _site_links(page):
            if link.startswith(("data:", "#")):
                continue
            assert not re.match(r"[a-z]+:|//", link), f"{name} loads {link} from another host"
            assert (site / link.split("?")[0].split("#")[0]).is_file(), f"{name}: broken link {link}"
        scripts = " ".join(re.findall(r"<script[^>]*>(.*?)</script>", page, re.S))
        assert "http://" not in scripts and "https://" not in scripts, name
        assert 'href="index.html"' in page and 'href="search.html"' in page  # contents and search on every page
    middle = pages["01_page.html"]
    assert 'href="00_page.html" rel="prev"' in middle and 'href="02_page.html" rel="next"' in middle
    assert "mathjax/MathJax.js?config=" in middle and "/home/builder" not in middle
    assert "rel=\"prev\"" not in pages["00_page.html"] and "rel=\"next\"" not in pages["02_page.html"]
    search = (site / "search.js").read_text()
    assert all(t in search for t in titles) and "word2" in search


def test_site_without_mathjax_is_one_error(tmp_path, monkeypatch, capsys):
    import builtins

    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 00 · T")]), tmp_path / "00_a.ipynb")
    real_import = builtins.__import__

    def no_mathjax(name, *args, **kwargs):
        if name == "jupyter_server_mathjax":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mathjax)
    assert main(["--site", "--out", str(tmp_path)]) == 1
    assert "jupyter-server-mathjax" in capsys.readouterr().err and not (tmp_path / "site").exists()


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
    assert record["finished_runs_before"] == 1 and record["machine"]["cpus"] == os.cpu_count()
    assert record["commit"] and record["versions"]["torch"]  # what the time was measured with
