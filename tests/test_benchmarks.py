"""benchmarks/run.py: the quick run end to end (JSON schema, agreement checks), and its checks on their own."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_sizes_are_sop_like(bench):
    sizes = bench.class_sizes(60502, 11316, np.random.default_rng(0))
    assert sizes.sum() == 60502 and len(sizes) == 11316
    assert sizes.min() >= 2 and sizes.max() <= 12
    x, y = bench.clustered_embeddings(500, 90, 16)
    assert x.dtype == np.float32 and x.shape == (500, 16) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)
    assert len(np.unique(y)) == 90 and np.bincount(y).min() >= 2


def test_first_hit_ranks_drops_the_query_itself(bench):
    labels = np.array([0, 1, 0, 1])
    neighbours = np.array([
        [0, 1, 3],  # self first; others 1, 3: no class-0 item -> rank 2 (= k, none found)
        [3, 1, 0],  # self second; others 3 (class 1) -> rank 0
        [1, 3, 0],  # self last; others 1, 3 -> none of class 0 -> 2
        [0, 2, 1],  # self absent (a duplicate took its place): the last one is dropped; 0, 2 -> none -> 2
    ])
    assert bench.first_hit_ranks(neighbours, labels).tolist() == [2, 0, 2, 2]


@pytest.fixture
def faiss_ranks(bench):
    """1,500 clustered points in 16 d, and each one's first-hit rank from faiss's 101 nearest neighbours."""
    faiss = pytest.importorskip("faiss")
    x, y = bench.clustered_embeddings(1500, 280, 16)
    index = faiss.IndexFlatL2(16)
    index.add(x)
    return x, y, bench.first_hit_ranks(index.search(x, 101)[1], y)


def test_agreement_check_rejects_a_wrong_recall(bench, faiss_ranks):
    x, y, ranks = faiss_ranks
    ks = (1, 10, 100)
    from pnca_utils.metrics import recall_at_k

    ours = {str(k): v for k, v in recall_at_k(x, y, ks).items()}
    assert bench.check_against_faiss(x, y, ranks, ks, ours)["recall_equal"]
    wrong = dict(ours, **{"1": ours["1"] + 1 / len(y)})  # one query more counted as a hit at K = 1
    with pytest.raises(AssertionError, match="does not follow"):
        bench.check_against_faiss(x, y, ranks, ks, wrong)


def test_agreement_check_rejects_wrong_ranks(bench, faiss_ranks, monkeypatch):
    from pnca_utils import metrics

    x, y, ranks = faiss_ranks
    ks = (1, 10, 100)
    right = metrics._first_match_ranks

    def off_by_one(s, chunk_size, ks):  # a fast wrong answer: every third query one place further down
        r = right(s, chunk_size, ks)
        r[::3] += 1
        return r

    monkeypatch.setattr(metrics, "_first_match_ranks", off_by_one)
    ours = {str(k): v for k, v in metrics.recall_at_k(x, y, ks).items()}
    with pytest.raises(AssertionError, match="near-ties"):
        bench.check_against_faiss(x, y, ranks, ks, ours)


def test_quick_run_end_to_end(tmp_path):
    pytest.importorskip("faiss")
    pytest.importorskip("pytorch_metric_learning")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["schema"] == 1 and report["mode"] == "quick"
    assert {"machine", "load_average_start", "load_average_end", "targets", "targets_met", "summary",
            "book"} <= set(report)
    assert len(report["load_average_start"]) == 3
    for r in report["retrieval"]:
        assert r["ks"] == [1, 10, 100, 1000]
        for impl in ("ours", "faiss", "pml"):
            assert r[impl]["seconds"] > 0 and r[impl]["peak_rss_delta_mb"] >= 0
            assert set(r[impl]["recall"]) == {"1", "10", "100", "1000"}
        assert r["ratio_vs_faiss"] == pytest.approx(r["ours"]["seconds"] / r["faiss"]["seconds"])
        assert r["agreement"]["pml_recall_equal_to_faiss"]
        assert r["matmul_floor"]["blocks"] >= 1 and r["matmul_floor"]["seconds"] > 0
        assert r["ratio_vs_floor"] == pytest.approx(r["ours"]["seconds"] / r["matmul_floor"]["seconds"])
        a = r["agreement"]
        assert a["recall_equal"] or a["explained_by_near_ties"] == a["queries_disagreeing"]
    loss = report["loss"]
    assert loss["agreement"]["loss_abs_diff"] <= 1e-5
    assert loss["ours"]["seconds"] > 0 and loss["pml"]["seconds"] > 0 and loss["matmul_floor"]["seconds"] > 0
    assert report["training"]["images_per_second"] > 0 and report["training"]["images"] > 0
