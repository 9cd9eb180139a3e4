"""Benchmarks of pnca_utils against faiss and pytorch-metric-learning (PML), on the same inputs in the same run.

    python benchmarks/run.py --out results/benchmarks.json [--quick] [--repeats N] [--only retrieval,loss,training]

1. Retrieval evaluation at the scale of Stanford Online Products (SOP): 60,502 random, clustered embeddings
   in 11,316 classes of 2 to 12 images, at 512 and at 2,048 dimensions. The whole `metrics.recall_at_k` call
   for K = 1, 10, 100, 1000 (leave-one-out) against faiss's exact `IndexFlatL2` search with k = 1001 (its
   search alone), and against PML's `AccuracyCalculator` computing the same recalls from its own k = 1000
   neighbour search. The recalls must agree; see `check_against_faiss` for exact ties and near-ties.
2. The loss: `losses.proxy_nca_loss` (ProxyNCA++: T = 1/9, positive in the denominator) forward and backward,
   batch 192 x 2,048 dimensions x 11,318 proxies, against PML's `ProxyNCALoss(softmax_scale=9)`, and against
   the floor set by the loss's three matrix products (the bare `x @ proxies.T`, forward and backward). The
   losses must agree to 1e-5, the gradients to 1e-3 of their largest entry.
3. Training throughput: images per second of `fit`'s training steps, one epoch at the book's default size.
   The whole book's wall time is copied from build/book_time.json when that file exists.

Every measured call runs in a fresh Python process, so that its peak memory is its own: the process loads its
inputs, runs a warm-up where one is needed, resets the kernel's peak-RSS mark (/proc/self/clear_refs), runs the
call under a wall clock, and reports VmHWM minus the RSS it had before the call. Implementations are measured in
turn, round after round (ours, then the references, `--repeats` times), and the best time of each is kept, so
that other jobs on the machine slow all of them alike; the load average is recorded with every measurement.
`--quick` runs every part at small sizes in seconds (tests/test_benchmarks.py runs it end to end).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 10, 100, 1000)

FULL = {
    "retrieval": {"n": 60502, "classes": 11316, "dims": (512, 2048), "ks": KS},
    "loss": {"batch": 192, "dim": 2048, "proxies": 11318, "iterations": 5},
    "training": {"size": "default", "epochs": 1, "tiny": False},
}
QUICK = {
    "retrieval": {"n": 3000, "classes": 560, "dims": (64,), "ks": KS},
    "loss": {"batch": 32, "dim": 128, "proxies": 1000, "iterations": 3},
    "training": {"size": "ci", "epochs": 1, "tiny": True},
}
TARGETS = {
    "retrieval_vs_faiss_max_ratio": 1.0,  # our time / faiss's search time
    "retrieval_vs_pml_min_speedup": 2.0,  # PML's time / ours
    "retrieval_peak_mb_max": 1024,  # our peak extra memory
    "loss_vs_pml_max_ratio": 0.7,  # our time / PML's
}


# ------------------------------------------------------------------------------------------------ the data
def class_sizes(n: int, classes: int, rng: np.random.Generator, low: int = 2, high: int = 12) -> np.ndarray:
    """`classes` sizes in [low, high] summing to n, spread like SOP's test classes (mean n / classes)."""
    p = (n / classes - low) / (high - low)
    sizes = low + rng.binomial(high - low, p, classes)
    while sizes.sum() != n:  # move the total to n one image at a time, within the bounds
        step = 1 if sizes.sum() < n else -1
        room = np.flatnonzero((sizes < high) if step > 0 else (sizes > low))
        sizes[rng.choice(room, min(len(room), abs(n - int(sizes.sum()))), replace=False)] += step
    return sizes


def clustered_embeddings(n: int, classes: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around class centres, classes grouped in 12 super-classes (as SOP's), in shuffled order.

    A centre is its super-class's direction plus its own (equal weights); an image adds noise of norm
    1.75 (dim / 512)^(1/4) times the centre's, which keeps Recall@1 near 0.7 at SOP's size in 512 and in 2,048
    dimensions: far from 0 and from 1, with ranks spread over 1..1000.
    """
    rng = np.random.default_rng(seed)
    noise = 1.75 * (dim / 512) ** 0.25
    labels = np.repeat(np.arange(classes), class_sizes(n, classes, rng))
    supers = rng.standard_normal((12, dim)) / np.sqrt(dim)
    centres = supers[rng.integers(0, 12, classes)] + rng.standard_normal((classes, dim)) / np.sqrt(dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):
        part = centres[labels[start:start + 8192]]
        part = part + noise * rng.standard_normal(part.shape) / np.sqrt(dim)
        x[start:start + 8192] = part / np.linalg.norm(part, axis=1, keepdims=True)
    order = rng.permutation(n)
    return x[order], labels[order]


# --------------------------------------------------------------------------------------- child processes
def _memory() -> dict[str, int]:
    """VmRSS, VmHWM and RssAnon of this process, in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


class Measure:
    """Wall time and peak memory above the current one of the code run inside `with Measure() as m:`.

    Two peaks: `peak_rss_delta_mb`, the largest anonymous resident memory (what the code allocates: arrays,
    tensors, buffers of torch, MKL, faiss) seen by a thread that reads /proc/self/statm every 2 ms, minus its
    value before; and `peak_hwm_delta_mb`, the kernel's high-water mark of all resident memory (VmHWM, reset
    through /proc/self/clear_refs), which also counts pages of the libraries' code read back from disk --
    on a machine that pages out idle file pages (as this one does, with DAMON) that can be hundreds of MB.
    """

    INTERVAL = 0.002

    def _anon_kib(self) -> int:
        resident, shared = os.pread(self._statm, 200, 0).split()[1:3]  # pages: resident, file-backed/shared
        return (int(resident) - int(shared)) * self._page_kib

    def _sample(self):
        while not self._stop.wait(self.INTERVAL):
            self.anon_peak = max(self.anon_peak, self._anon_kib())

    def __enter__(self):
        import threading

        self._page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.reset = True
        except OSError:
            self.reset = False  # then VmHWM may still hold an earlier peak: that delta is an upper bound
        self.before = _memory()
        self.anon_before = self.anon_peak = self._anon_kib()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.anon_peak = max(self.anon_peak, self._anon_kib())
        self._stop.set()
        self._sampler.join()
        os.close(self._statm)
        self.peak_mb = max(0, self.anon_peak - self.anon_before) / 1024
        self.hwm_mb = max(0, _memory()["VmHWM"] - self.before["VmRSS"]) / 1024
        return False

    def record(self, **extra) -> dict:
        return {"seconds": self.seconds, "peak_rss_delta_mb": self.peak_mb, "peak_hwm_delta_mb": self.hwm_mb,
                "hwm_reset": self.reset, "load_1min": os.getloadavg()[0], **extra}


def child_ours_recall(args: dict) -> dict:
    import torch

    from pnca_utils import knn, metrics

    x, y = np.load(args["x"]), np.load(args["y"])
    metrics.recall_at_k(x[:300], y[:300], args["ks"])  # warm-up: imports, thread pool, BLAS
    recounted, band_ranks, exact_ranks = {"band": 0, "whole_rows": 0}, knn._band_ranks, knn._exact_ranks

    def from_band(s, qs, gs, positions, sure, band):  # how many queries the float32 bounds left open
        recounted["band"] += len(positions)
        recounted["band_pairs"] = recounted.get("band_pairs", 0) + int(torch.isin(band.query, positions).sum())
        return band_ranks(s, qs, gs, positions, sure, band)

    def from_rows(s, chunk_rows, rows=None, g_sq=None):  # the same, when the band was too large to keep
        recounted["whole_rows"] += len(s.queries) if rows is None else len(rows)
        return exact_ranks(s, chunk_rows, rows, g_sq)

    knn._band_ranks, knn._exact_ranks = from_band, from_rows
    with Measure() as m:
        recall = metrics.recall_at_k(x, y, args["ks"])
    return m.record(recall={str(k): v for k, v in recall.items()}, threads=torch.get_num_threads(),
                    float64_recounted_queries=recounted)


def child_recall_floor(args: dict) -> dict:
    """The matrix products our leave-one-out pass cannot avoid, and nothing else: float32 blocks of the
    distance matrix's upper triangle (the upper three quarters of the diagonal blocks), each
    [q, |q|^2, 1] . [-2g, 1, |g|^2]^T, with the blocks `recall_at_k` uses. Its time is a floor for ours."""
    import torch

    from pnca_utils import knn

    x = torch.from_numpy(np.load(args["x"]))
    block = math.isqrt(knn._FAST_BLOCK_BYTES // 4)
    sq, everything = knn._sq_norms(x), torch.arange(len(x))
    q, g = (knn._augmented(x, everything, sq, torch.float32, query) for query in (True, False))
    buffer = torch.empty(block * block)
    tiles = knn._tiles(len(x), block)
    parts = [(rows, columns) for _, _, rows, columns, _ in knn._schedule(tiles, tiles, leave_one_out=True)]

    def product(rows, columns):
        a, c = q[rows[0]:rows[1]], g[columns[0]:columns[1]]
        torch.matmul(a, c.T, out=buffer[:len(a) * len(c)].view(len(a), len(c)))

    product(*parts[0])  # warm-up
    with Measure() as m:
        for rows, columns in parts:
            product(rows, columns)
    return m.record(threads=torch.get_num_threads(), block=block, blocks=len(parts))


def first_hit_ranks(neighbours: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """From a leave-one-out k+1 search: per query, how many other items come before its first same-class one
    (k when none of the k nearest others is of its class). The query itself is dropped from its list, or
    the last neighbour where the query is not in it."""
    n, width = neighbours.shape
    is_self = neighbours == np.arange(n)[:, None]
    is_self[~is_self.any(1), -1] = True
    others = neighbours[~is_self].reshape(n, width - 1)
    hit = labels[others] == labels[:, None]
    return np.where(hit.any(1), hit.argmax(1), width - 1)


def child_faiss(args: dict) -> dict:
    import faiss

    x, y = np.load(args["x"]), np.load(args["y"])
    k = max(args["ks"]) + 1
    with Measure() as m:
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        start = time.perf_counter()
        _, neighbours = index.search(x, k)
        search = time.perf_counter() - start
    ranks = first_hit_ranks(neighbours, y)
    np.save(args["ranks"], ranks)
    recall = {str(kk): float((ranks < kk).mean()) for kk in args["ks"]}
    rec = m.record(recall=recall, k=k, threads=faiss.omp_get_max_threads())
    rec["add_and_search_seconds"], rec["seconds"] = rec["seconds"], search  # the search alone is compared
    return rec


def child_pml(args: dict) -> dict:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    ks = args["ks"]

    class RecallCalculator(AccuracyCalculator):
        """PML's calculator with Recall@K (a same-class item among the K nearest) for our K values."""

        def requires_knn(self):
            return super().requires_knn() + [f"recall_at_{k}" for k in ks]

    def recall_at(k):
        def calculate(self, knn_labels, query_labels, **kwargs):
            return (knn_labels[:, :k] == query_labels[:, None]).any(1).double().mean().item()
        return calculate

    for k in ks:
        setattr(RecallCalculator, f"calculate_recall_at_{k}", recall_at(k))
    x, y = np.load(args["x"]), np.load(args["y"])
    include = tuple(f"recall_at_{k}" for k in ks)
    calculator = RecallCalculator(include=include, k=max(ks), device=torch.device("cpu"))
    calculator.get_accuracy(x[:300], y[:300], include=include)  # warm-up (k falls to what 300 items allow)
    with Measure() as m:
        result = calculator.get_accuracy(x, y, include=include)
    return m.record(recall={str(k): result[f"recall_at_{k}"] for k in ks}, k=max(ks))


def _loss_inputs(args: dict):
    import torch

    g = torch.Generator().manual_seed(args["seed"])
    emb = torch.randn(args["batch"], args["dim"], generator=g)
    proxies = torch.randn(args["proxies"], args["dim"], generator=g)
    labels = torch.randint(0, args["proxies"], (args["batch"],), generator=g)
    upstream = torch.randn(args["batch"], args["proxies"], generator=g)  # the floor's incoming gradient
    return emb, proxies, labels, upstream


def child_loss(args: dict) -> dict:
    import torch

    emb0, proxies0, labels, upstream = _loss_inputs(args)
    impl = args["impl"]
    if impl == "ours":
        from pnca_utils.losses import proxy_nca_loss

        def step(e, p):
            return proxy_nca_loss(e, labels, p, temperature=1 / 9, positive_in_denominator=True)
    elif impl == "pml":
        from pytorch_metric_learning.losses import ProxyNCALoss

        pml = ProxyNCALoss(num_classes=args["proxies"], embedding_size=args["dim"], softmax_scale=9)

        def step(e, p):
            pml.proxies = p  # (C, D), as ours; PML normalises embeddings and proxies as we do
            return pml(e, labels)
    else:  # the three matrix products of the loss and nothing else

        def step(e, p):
            return (e @ p.T, upstream)

    def run():
        e = emb0.clone().requires_grad_(True)
        p = torch.nn.Parameter(proxies0.clone())
        out = step(e, p)
        if isinstance(out, tuple):
            out[0].backward(out[1])
            value = float("nan")
        else:
            out.backward()
            value = out.item()
        return value, e.grad, p.grad

    for _ in range(2):
        run()  # warm-up
    times = []
    with Measure() as m:
        for _ in range(args["iterations"]):
            start = time.perf_counter()
            value, g_emb, g_prox = run()
            times.append(time.perf_counter() - start)
    if impl != "floor":
        np.save(args["grads"], np.concatenate([g_emb.numpy().ravel(), g_prox.numpy().ravel()]))
    rec = m.record(loss=value, iterations=args["iterations"], threads=torch.get_num_threads())
    rec["seconds"], rec["all_iterations_seconds"] = min(times), times
    return rec


def child_training(args: dict) -> dict:
    import torch

    from pnca_utils.config import make_config
    from pnca_utils.training import fit

    if args["tiny"]:  # --quick: a tiny embedded set and random weights, nothing pretrained or cached
        from pnca_utils.data.embedded import EmbeddedSpec, load_embedded

        data = load_embedded(32, EmbeddedSpec(num_classes=16, images_per_class=8, source_images=50),
                             cache_dir=args["cache"])
        config = make_config("proxynca++", args["size"], epochs=args["epochs"], weights=None, image_size=32)
    else:
        from pnca_utils.data import load_data

        config = make_config("proxynca++", args["size"], epochs=args["epochs"])
        data = load_data("embedded", image_size=config.image_size)
    with Measure() as m:
        result = fit(config, data, out_dir=None, progress=False)
    epoch = result.history["epochs"][0]
    images = len([s for s in result.history["steps"] if s["epoch"] == 1]) * config.batch_size
    return m.record(images=images, train_seconds=epoch["seconds"], images_per_second=images / epoch["seconds"],
                    config={"preset": "proxynca++", "size": args["size"], "epochs": args["epochs"],
                            "image_size": config.image_size, "batch_size": config.batch_size},
                    threads=torch.get_num_threads())


CHILDREN = {"ours_recall": child_ours_recall, "recall_floor": child_recall_floor, "faiss": child_faiss,
            "pml": child_pml, "loss": child_loss, "training": child_training}


def run_child(name: str, args: dict, work: Path) -> dict:
    """Run CHILDREN[name](args) in a fresh interpreter; its result comes back through a JSON file."""
    result = work / f"{name}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-args", json.dumps(args),
           "--child-out", str(result)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def best_of(records: list[dict]) -> dict:
    """The fastest record, with every round's time and the largest peak memory of all rounds."""
    best = dict(min(records, key=lambda r: r["seconds"]))
    best["all_seconds"] = [r["seconds"] for r in records]
    best["peak_rss_delta_mb"] = max(r["peak_rss_delta_mb"] for r in records)
    best["load_1min"] = [r["load_1min"] for r in records]
    return best


# ------------------------------------------------------------------------------------------------- checks
def check_against_faiss(x: np.ndarray, y: np.ndarray, faiss_ranks: np.ndarray, ks, ours: dict) -> dict:
    """Assert that our recalls are faiss's, query by query, up to float32 near-ties; return what was found.

    Our ranks follow float64 distances, ties broken by the lower index (metrics.py). faiss ranks by float32
    distances. Where the two disagree on a query at some K, the query's float64 rank r and faiss's rank f
    must differ by no more than the number of other-class items whose float64 distance lies within float32
    rounding of the nearest match's distance (near-ties that float32 cannot order); anything else fails.
    """
    import torch

    from pnca_utils import knn, metrics

    s = metrics._search(x, y, None, None)
    exact_needed = any(round(ours[str(k)] * len(y)) != int((faiss_ranks < k).sum()) for k in ks)
    result = {"recall_equal": not exact_needed, "queries_disagreeing": 0, "explained_by_near_ties": 0}
    if not exact_needed:
        return result
    ranks = metrics._first_match_ranks(s, None, list(ks)).numpy()
    for k in ks:
        assert round(ours[str(k)] * len(y)) == int((ranks < k).sum()), (
            f"the recall at {k} reported by recall_at_k does not follow from the per-query ranks")
    differ = np.zeros(len(y), bool)
    for k in ks:
        differ |= (ranks < k) != (faiss_ranks < k)
    queries = np.flatnonzero(differ)
    result["queries_disagreeing"] = len(queries)
    kappa = 2 * knn._error_factor(x.shape[1], torch.float32)  # faiss's float32 rounding, with room
    x64 = x.astype(np.float64)
    sq = (x64 ** 2).sum(1)
    for q in queries:
        d = np.maximum(sq[q] + sq - 2 * x64 @ x64[q], 0)
        d[q] = np.inf
        same = y == y[q]
        same[q] = False
        d_star = d[same].min()
        near = (~same) & (np.abs(d - d_star) <= kappa * (sq[q] + sq))
        near[q] = False
        mine = min(ranks[q], max(ks))
        assert abs(mine - int(faiss_ranks[q])) <= near.sum(), (
            f"query {q}: our rank {mine}, faiss's {faiss_ranks[q]}, only {near.sum()} near-ties between them")
        exact = min(float(knn._exact_ranks(s, 1, torch.tensor([q]))[0]), max(ks))
        assert all((mine < k) == (exact < k) for k in ks), f"query {q}: our rank {mine}, float64 rank {exact}"
        result["explained_by_near_ties"] += 1
    return result


def compare_grads(a_path: str, b_path: str) -> tuple[float, float]:
    a, b = np.load(a_path), np.load(b_path)
    return float(np.abs(a - b).max()), float(np.abs(b).max())


# -------------------------------------------------------------------------------------------------- parts
def bench_ours_only(cfg: dict, work: Path, log) -> None:
    """Development aid (--ours-only): our retrieval call alone, once per size, nothing compared or written."""
    for dim in cfg["dims"]:
        x, y = clustered_embeddings(cfg["n"], cfg["classes"], dim)
        args = {"x": str(work / "x.npy"), "y": str(work / "y.npy"), "ks": list(cfg["ks"])}
        np.save(args["x"], x)
        np.save(args["y"], y)
        rec = run_child("ours_recall", args, work)
        log(f"retrieval {dim}d: ours {rec['seconds']:.2f} s, +{rec['peak_rss_delta_mb']:.0f} MB, recall {rec['recall']}")


def bench_retrieval(cfg: dict, repeats: int, work: Path, log) -> list[dict]:
    out = []
    for dim in cfg["dims"]:
        x, y = clustered_embeddings(cfg["n"], cfg["classes"], dim)
        paths = {"x": str(work / f"x{dim}.npy"), "y": str(work / f"y{dim}.npy")}
        np.save(paths["x"], x)
        np.save(paths["y"], y)
        args = {**paths, "ks": list(cfg["ks"]), "ranks": str(work / f"faiss-ranks{dim}.npy")}
        runs = {"ours": [], "faiss": [], "pml": [], "floor": []}
        for r in range(repeats):
            for impl, child in (("ours", "ours_recall"), ("faiss", "faiss"), ("pml", "pml"), ("floor", "recall_floor")):
                runs[impl].append(run_child(child, args, work))
                log(f"retrieval {dim}d round {r + 1}: {impl} {runs[impl][-1]['seconds']:.2f} s, "
                    f"+{runs[impl][-1]['peak_rss_delta_mb']:.0f} MB")
        ours, faiss, pml, floor = (best_of(runs[k]) for k in ("ours", "faiss", "pml", "floor"))
        agreement = check_against_faiss(x, y, np.load(args["ranks"]), cfg["ks"], ours["recall"])
        agreement["pml_recall_equal_to_faiss"] = all(
            abs(pml["recall"][k] - faiss["recall"][k]) * len(y) < 0.5 for k in faiss["recall"])
        assert agreement["pml_recall_equal_to_faiss"], (pml["recall"], faiss["recall"])
        out.append({
            "n": cfg["n"], "dim": dim, "classes": cfg["classes"], "ks": list(cfg["ks"]),
            "ours": ours, "faiss": faiss, "pml": pml, "matmul_floor": floor,
            "ratio_vs_faiss": ours["seconds"] / faiss["seconds"],
            "ratio_vs_floor": ours["seconds"] / floor["seconds"],
            "floor_vs_faiss": floor["seconds"] / faiss["seconds"],
            "speedup_vs_pml": pml["seconds"] / ours["seconds"],
            "agreement": agreement,
        })
        log(f"retrieval {dim}d: ours/faiss {out[-1]['ratio_vs_faiss']:.2f}, PML/ours {out[-1]['speedup_vs_pml']:.2f}, "
            f"ours/floor {out[-1]['ratio_vs_floor']:.2f}, floor/faiss {out[-1]['floor_vs_faiss']:.2f}, "
            f"recall {ours['recall']}")
    return out


def bench_loss(cfg: dict, repeats: int, work: Path, log) -> dict:
    base = {"seed": 0, "batch": cfg["batch"], "dim": cfg["dim"], "proxies": cfg["proxies"],
            "iterations": cfg["iterations"]}
    runs = {"ours": [], "pml": [], "floor": []}
    for r in range(repeats):
        for impl in runs:
            runs[impl].append(run_child("loss", {**base, "impl": impl, "grads": str(work / f"grads-{impl}.npy")},
                                        work))
            log(f"loss round {r + 1}: {impl} {runs[impl][-1]['seconds'] * 1e3:.0f} ms")
    ours, pml, floor = (best_of(runs[k]) for k in ("ours", "pml", "floor"))
    grad_diff, grad_scale = compare_grads(str(work / "grads-ours.npy"), str(work / "grads-pml.npy"))
    loss_diff = abs(ours["loss"] - pml["loss"])
    assert loss_diff <= 1e-5, (ours["loss"], pml["loss"])
    assert grad_diff <= 1e-3 * grad_scale, (grad_diff, grad_scale)
    return {**base, "temperature": 1 / 9, "ours": ours, "pml": pml, "matmul_floor": floor,
            "ratio_vs_pml": ours["seconds"] / pml["seconds"], "ratio_vs_floor": ours["seconds"] / floor["seconds"],
            "seconds_above_floor": ours["seconds"] - floor["seconds"],
            "agreement": {"loss_abs_diff": loss_diff, "grad_max_abs_diff": grad_diff, "grad_max_abs": grad_scale}}


def bench_training(cfg: dict, work: Path, log) -> dict:
    rec = run_child("training", {**cfg, "cache": str(work / "data")}, work)
    log(f"training: {rec['images_per_second']:.0f} images/s ({rec['images']} images in {rec['train_seconds']:.1f} s)")
    return rec


def book_time() -> dict | None:
    path = ROOT / "build" / "book_time.json"
    if not path.exists():
        return None
    return {"source": "build/book_time.json", **json.loads(path.read_text())}


def machine() -> dict:
    import faiss
    import pytorch_metric_learning
    import torch

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python":
            platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "faiss": faiss.__version__, "pytorch_metric_learning": pytorch_metric_learning.__version__}


def summary(report: dict) -> list[str]:
    lines = []
    for r in report.get("retrieval", []):
        took = {k: f"{r[k]['seconds']:.1f} s (+{r[k]['peak_rss_delta_mb']:.0f} MB)" for k in ("ours", "faiss", "pml")}
        lines.append(f"retrieval {r['n']} x {r['dim']}: ours {took['ours']}, faiss search {took['faiss']}, "
                     f"PML {took['pml']}: ours/faiss {r['ratio_vs_faiss']:.2f}, PML/ours {r['speedup_vs_pml']:.2f}x")
    if "loss" in report:
        r = report["loss"]
        lines.append(f"loss {r['batch']} x {r['dim']} x {r['proxies']}: ours {r['ours']['seconds'] * 1e3:.0f} ms, "
                     f"PML {r['pml']['seconds'] * 1e3:.0f} ms (ours/PML {r['ratio_vs_pml']:.2f}), matmul floor "
                     f"{r['matmul_floor']['seconds'] * 1e3:.0f} ms (ours/floor {r['ratio_vs_floor']:.2f})")
    if "training" in report:
        r = report["training"]
        lines.append(f"training ({r['config']['size']}): {r['images_per_second']:.0f} images/s")
    return lines


def markdown(report: dict) -> str:
    """The results as the tables of benchmarks/README.md."""
    out = []
    if report.get("retrieval"):
        out += ["| embeddings | ours: `recall_at_k` | faiss `IndexFlatL2` search, k = 1001 | PML `AccuracyCalculator` "
                "| ours / faiss | PML / ours | recalls equal | half-matrix products alone (floor) | ours / floor |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in report["retrieval"]:
            cell = {k: f"{r[k]['seconds']:.1f} s, +{r[k]['peak_rss_delta_mb']:.0f} MB" for k in ("ours", "faiss", "pml")}
            a = r["agreement"]
            equal = "yes" if a["recall_equal"] else f"{a['explained_by_near_ties']} near-tie queries differ"
            floor = (f"{r['matmul_floor']['seconds']:.1f} s ({r['floor_vs_faiss']:.2f} x faiss) | {r['ratio_vs_floor']:.2f}"
                     if "matmul_floor" in r else "not measured | ")
            out.append(f"| {r['n']:,} x {r['dim']:,} ({r['classes']:,} classes) | {cell['ours']} | {cell['faiss']} | "
                       f"{cell['pml']} | {r['ratio_vs_faiss']:.2f} | {r['speedup_vs_pml']:.2f}x | {equal} | {floor} |")
        recalls = ", ".join(f"{r['dim']} d: " + " / ".join(f"{100 * v:.1f}" for v in r["ours"]["recall"].values())
                            for r in report["retrieval"])
        out += ["", f"Recall@1 / 10 / 100 / 1000 of the test data (%): {recalls}."]
    if report.get("loss"):
        r = report["loss"]
        out += ["", "| loss, forward + backward | time | peak memory | ours / it |", "|---|---|---|---|",
                f"| ours: `proxy_nca_loss` | {1e3 * r['ours']['seconds']:.0f} ms | "
                f"+{r['ours']['peak_rss_delta_mb']:.0f} MB | |",
                f"| PML `ProxyNCALoss(softmax_scale=9)` | {1e3 * r['pml']['seconds']:.0f} ms | "
                f"+{r['pml']['peak_rss_delta_mb']:.0f} MB | {r['ratio_vs_pml']:.2f} |",
                f"| floor: the bare `x @ proxies.T`, forward + backward | {1e3 * r['matmul_floor']['seconds']:.0f} ms | "
                f"+{r['matmul_floor']['peak_rss_delta_mb']:.0f} MB | {r['ratio_vs_floor']:.2f} |"]
    if report.get("training"):
        r = report["training"]
        out += ["", f"Training (ProxyNCA++, size `{r['config']['size']}`, {r['config']['image_size']} px, batch "
                f"{r['config']['batch_size']}): {r['images_per_second']:.0f} images/s ({r['images']} images in "
                f"{r['train_seconds']:.1f} s)."]
    if report.get("book"):
        out += ["", f"The whole book (build/book_time.json): {json.dumps(report['book'])}."]
    out += ["", f"Load average (1, 5, 15 min) at the start {report['load_average_start']}, at the end "
            f"{report['load_average_end']}; {report['machine']['cpus']} CPUs ({report['machine']['cpu']})."]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/benchmarks.json")
    p.add_argument("--quick", action="store_true", help="small sizes: the whole run in seconds")
    p.add_argument("--repeats", type=int, default=None, help="rounds per measurement (default 3, quick 1)")
    p.add_argument("--only", default="retrieval,loss,training", help="comma-separated parts to run")
    p.add_argument("--dims", help="comma-separated embedding sizes for the retrieval part (default 512,2048)")
    p.add_argument("--ours-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-args", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        result = CHILDREN[a.child](json.loads(a.child_args))
        Path(a.child_out).write_text(json.dumps(result))
        return 0
    parts = [s for s in a.only.split(",") if s]
    unknown = set(parts) - {"retrieval", "loss", "training"}
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}")
    sizes = QUICK if a.quick else FULL
    if a.dims:
        sizes = {**sizes, "retrieval": {**sizes["retrieval"], "dims": tuple(int(d) for d in a.dims.split(","))}}
    repeats = a.repeats or (1 if a.quick else 3)
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:7.1f} s, load {os.getloadavg()[0]:.1f}] {message}", flush=True)

    report = {"schema": 1, "mode": "quick" if a.quick else "full", "repeats": repeats,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "load_average_start": list(os.getloadavg()), "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="pnca-bench-") as tmp:
        work = Path(tmp)
        if a.ours_only:
            bench_ours_only(sizes["retrieval"], work, log)
            return 0
        if "retrieval" in parts:
            report["retrieval"] = bench_retrieval(sizes["retrieval"], repeats, work, log)
        if "loss" in parts:
            report["loss"] = bench_loss(sizes["loss"], repeats, work, log)
        if "training" in parts:
            report["training"] = bench_training(sizes["training"], work, log)
    report["book"] = book_time()
    report["load_average_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - started
    met = {}
    for r in report.get("retrieval", []):
        met[f"retrieval_{r['dim']}d_vs_faiss"] = r["ratio_vs_faiss"] <= TARGETS["retrieval_vs_faiss_max_ratio"]
        met[f"retrieval_{r['dim']}d_vs_pml"] = r["speedup_vs_pml"] >= TARGETS["retrieval_vs_pml_min_speedup"]
        met[f"retrieval_{r['dim']}d_memory"] = r["ours"]["peak_rss_delta_mb"] <= TARGETS["retrieval_peak_mb_max"]
    if "loss" in report:
        met["loss_vs_pml"] = report["loss"]["ratio_vs_pml"] <= TARGETS["loss_vs_pml_max_ratio"]
    report["targets_met"] = met
    report["summary"] = summary(report)
    report["markdown"] = markdown(report)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for line in report["summary"]:
        print(line)
    print(f"targets met: {met}\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
