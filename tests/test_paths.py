"""Where data, results and the book are found: in a checkout, and from a package installed elsewhere."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pnca_utils import paths

ROOT = Path(__file__).resolve().parents[1]


def test_a_checkout_keeps_its_folders_and_variables_override_them(monkeypatch, tmp_path):
    monkeypatch.delenv("PNCA_DATA_DIR", raising=False)
    monkeypatch.delenv("PNCA_RESULTS_DIR", raising=False)
    assert paths.checkout() == ROOT
    assert (paths.data_dir(), paths.results_dir()) == (ROOT / "data", ROOT / "results")
    monkeypatch.setenv("PNCA_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("PNCA_RESULTS_DIR", str(tmp_path / "r"))
    assert (paths.data_dir(), paths.results_dir()) == (tmp_path / "d", tmp_path / "r")


def test_installed_it_uses_the_user_cache_and_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "checkout", lambda: None)
    monkeypatch.delenv("PNCA_DATA_DIR", raising=False)
    monkeypatch.delenv("PNCA_RESULTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert paths.data_dir() == tmp_path / "cache" / "pnca-book"
    assert paths.results_dir() == tmp_path / "results"


def test_the_built_package_installed_elsewhere_runs_the_cli(tmp_path, data_dir):
    """A non-editable install (pip builds the wheel from a copy of the sources) into a folder outside the
    checkout, imported from there, trains one run with the CLI and finds no checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "pnca_utils", source / "pnca_utils", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "PNCA_DATA_DIR": str(data_dir)}
    where = subprocess.run([sys.executable, "-c", "import pnca_utils, pnca_utils.paths as p; "
                            "print(pnca_utils.__file__); print(p.checkout()); print(p.results_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert Path(where[0]).is_relative_to(target) and where[1] == "None" and Path(where[2]) == work / "results"
    run = subprocess.run([sys.executable, "-m", "pnca_utils", "train", "--size", "ci", "--epochs", "1", "--quiet",
                          "--set", "weights=None", "--set", "image_size=16", "--out", "run"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (work / "run" / "metrics.json").is_file()
