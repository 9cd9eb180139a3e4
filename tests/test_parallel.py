"""Grids on several processes and on a Dask cluster give the sequential grid's runs, bit for bit."""
import logging
import os
import signal
import threading
import time

import pandas as pd
import pytest

from pnca_utils.experiments import parallel
from pnca_utils.experiments.ablation import proxynca_grid, run_grid, select
from pnca_utils.cli import main
from pnca_utils.config import ConfigError, make_config
from pnca_utils.experiments.parallel import RunsFailed, Task, execute
from pnca_utils.experiments.runs import locked, run_key

FIXED = dict(weights=None, epochs=1, batch_size=16, embedding_dim=16, threads=1)
METRICS = ["R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI", "F1"]
VARIANTS = ["ProxyNCA++", "− low temperature"]


def grid_rows(tmp_path, name, data, seeds=2, **options):
    runs = run_grid(select(proxynca_grid(), VARIANTS), "ci", seeds, tmp_path / name, data=data, progress=False,
                    **{**FIXED, **options})
    return runs.sort_values("key").reset_index(drop=True)


@pytest.fixture(scope="module")
def sequential(tiny_data, tmp_path_factory):
    """The grid in this process, one run after another: the reference."""
    return grid_rows(tmp_path_factory.mktemp("sequential"), "grid", tiny_data)


def same_runs(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a["key"]) == list(b["key"]) and list(a["variant"]) == list(b["variant"])
    assert a[METRICS].equals(b[METRICS])  # exact equality, every metric of every run


def test_two_local_processes_give_the_sequential_runs(sequential, tiny_data, tmp_path):
    parallel_rows = grid_rows(tmp_path, "grid", tiny_data, jobs=2)
    same_runs(parallel_rows, sequential)
    assert len(pd.read_csv(tmp_path / "grid" / "runs.csv")) == len(sequential)


def test_workers_read_the_data_themselves(tiny_data, tmp_path, monkeypatch):
    """Without `data`, a worker loads the config's data set (a real grid ships nothing)."""
    config = make_config("proxynca++", "ci", **FIXED)
    monkeypatch.setattr("pnca_utils.data.load_data", lambda *a, **k: tiny_data)
    monkeypatch.setattr("pnca_utils.training.load_data", lambda *a, **k: tiny_data)
    own = parallel.train_run(config, None, None)
    assert own["metrics"] == parallel.train_run(config, None, tiny_data)["metrics"]
    assert own["curve"] == [[1, own["metrics"]["R@1"]]]


def test_too_many_jobs_for_the_cores_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "train_run", lambda *a, **k: pytest.fail("trained before checking"))
    tasks = [Task("a", make_config("proxynca++", "ci", threads=2))]
    with pytest.raises(ConfigError, match="exceed this machine's"):
        execute(tasks, None, lambda *a: None, jobs=os.cpu_count())
    with pytest.raises(ConfigError, match="positive integer"):
        execute(tasks, None, lambda *a: None, jobs=0)
    assert main(["ablate", "--jobs", str(4 * os.cpu_count()), "--size", "ci", "--out", str(tmp_path / "g")]) == 2
    assert not (tmp_path / "g").exists()


def test_a_failed_run_is_named_and_the_others_finish(tiny_data, tmp_path):
    good = make_config("proxynca++", "ci", **FIXED)
    bad = make_config("proxynca++", "ci", **{**FIXED, "lr": 1e30, "proxy_lr": 1e30})  # the loss becomes NaN
    done = []
    failures = execute([Task("diverges", bad), Task("fine", good)], tmp_path / "runs",
                       lambda task, outcome: done.append(task.label), jobs=2, data=tiny_data, progress=False)
    assert done == ["fine"]
    assert [f.label for f in failures] == ["diverges"] and failures[0].key == run_key(bad)
    assert "TrainingError" in failures[0].error and "NaN" in failures[0].error.replace("nan", "NaN")
    assert not list((tmp_path / "runs").rglob("metrics.json"))[0].parent.name.startswith(run_key(bad))


def test_grid_reports_failures_at_the_end_and_keeps_the_rest(tiny_data, tmp_path, monkeypatch, capsys):
    real = parallel.train_run

    def fails_for_low_temperature(config, *args):
        if config.temperature == 1.0:
            raise RuntimeError("planted failure")
        return real(config, *args)

    monkeypatch.setattr(parallel, "train_run", fails_for_low_temperature)
    with pytest.raises(RunsFailed) as caught:
        grid_rows(tmp_path, "grid", tiny_data)
    assert sorted(f.label for f in caught.value.failures) == [f"− low temperature, seed {s}" for s in (0, 1)]
    assert "2 of 4 runs failed" in str(caught.value)
    kept = pd.read_csv(tmp_path / "grid" / "runs.csv")
    assert sorted(kept["variant"]) == ["ProxyNCA++", "ProxyNCA++"]  # the others finished and were recorded
    monkeypatch.setattr(parallel, "train_run", real)
    assert len(grid_rows(tmp_path, "grid", tiny_data)) == 4  # the same call again retries only the failed runs


def test_cli_lists_failed_runs_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(parallel, "train_run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    code = main(["ablate", "--size", "ci", "--seeds", "1", "--variant", "ProxyNCA++", "--quiet",
                 "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 run(s) failed" in err and "ProxyNCA++, seed 0" in err and "RuntimeError: boom" in err


def test_run_lock_serialises_two_processes_and_clears_partial_files(tmp_path):
    import multiprocessing

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint.pt.tmp").write_text("half written by a killed process")
    with locked(folder):
        assert not (folder / "checkpoint.pt.tmp").exists()
        # POSIX locks belong to a process, so the waiting side is another process
        child = multiprocessing.get_context("spawn").Process(target=_write_under_lock, args=(str(folder),))
        child.start()
        time.sleep(1.0)
        assert child.is_alive() and not (folder / "held").exists()  # waiting for our lock
    child.join(30)
    assert child.exitcode == 0 and (folder / "held").read_text() == "after"


def _write_under_lock(folder):
    from pathlib import Path

    with locked(Path(folder)):
        (Path(folder) / "held").write_text("after")


# --------------------------------------------------------------------------- #
# Dask
# --------------------------------------------------------------------------- #
distributed = pytest.importorskip("distributed")


@pytest.fixture
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as local:
        yield local


def test_dask_cluster_gives_the_sequential_runs(sequential, tiny_data, tmp_path, cluster):
    same_runs(grid_rows(tmp_path, "grid", tiny_data, scheduler=cluster.scheduler_address), sequential)


def test_a_killed_worker_leaves_no_half_run_and_the_grid_completes(tiny_data, tmp_path, tmp_path_factory, cluster):
    long = dict(epochs=12)  # long enough to be killed part-way
    reference = grid_rows(tmp_path_factory.mktemp("long"), "grid", tiny_data, seeds=1, **long)
    runs_dir = tmp_path / "grid" / "runs"
    result = {}

    def grid():
        result["rows"] = grid_rows(tmp_path, "grid", tiny_data, seeds=1, scheduler=cluster.scheduler_address,
                                   **long)

    thread = threading.Thread(target=grid)
    thread.start()
    killed = None
    with distributed.Client(cluster.scheduler_address) as client:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and thread.is_alive():
            part_way = [d for d in runs_dir.glob("*") if (d / "checkpoint.pt").exists()
                        and not (d / "metrics.json").exists()]
            training = {key: worker for worker, keys in client.processing().items() for key in keys}
            if part_way and f"pnca-{part_way[0].name}" in training:
                killed = part_way[0].name
                worker = training[f"pnca-{killed}"]
                os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
            time.sleep(0.01)
    thread.join(300)
    assert killed is not None, "no run was caught part-way"
    assert not thread.is_alive() and "rows" in result
    same_runs(result["rows"], reference)
    assert not list(runs_dir.rglob("*.tmp"))
    assert all((d / "metrics.json").exists() for d in runs_dir.iterdir())
