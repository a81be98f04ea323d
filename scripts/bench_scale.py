#!/usr/bin/env python
"""Scale benchmark of the FAISS vector index kinds (qa/vectors/faiss.py): build time, memory, latency, recall@10.

Vectors are synthetic but anchored in real ones: real 384-d MiniLM window vectors from a built index (--base, a
vectors.faiss of a flat index, e.g. of eval/squad-dev) are the cluster centres; each synthetic vector is a random
centre plus Gaussian noise shaped by the real vectors' covariance (top principal directions) plus a little isotropic
noise, then re-normalised. Without --base a Gaussian mixture (random centres) is used. Queries are 1,000 more vectors
drawn the same way (held out, never indexed). Ground truth: exact IndexFlatIP, computed in batches.

Latency is single-query (one row per call) with faiss.omp_set_num_threads(1); memory is the serialized index size
(what `save` writes and `load` reads) plus the RSS delta of building it.

    .venv/bin/python scripts/bench_scale.py --sizes 1k,10k,100k,1M --kinds auto,flat
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qa.vectors import base as B, faiss as V  # noqa: E402

TARGETS = {"memory": 1 << 30, "p50_ms": 20.0, "recall": 0.95}


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s.rstrip("km")) * mult)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_base(path: str | None, dim: int, rng) -> np.ndarray:
    if path:
        import faiss

        idx = faiss.read_index(path)
        base = idx.index.reconstruct_n(0, idx.ntotal) if hasattr(idx, "id_map") else idx.reconstruct_n(0, idx.ntotal)
        return np.asarray(base, np.float32)
    c = rng.normal(size=(2_000, dim)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


class Generator:
    """Perturbed real (or random) centres, noise along the centres' principal directions, re-normalised."""

    def __init__(self, base: np.ndarray, seed: int = 0, sigma: float = 0.6, iso: float = 0.02):
        self.base = base
        self.rng = np.random.default_rng(seed)
        centred = base - base.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        r = min(64, len(s))
        self.dirs = (vt[:r] * (s[:r, None] / np.sqrt(len(base)))).astype(np.float32)  # covariance square root
        self.sigma, self.iso = sigma, iso

    def draw(self, n: int) -> np.ndarray:
        out = np.empty((n, self.base.shape[1]), np.float32)
        for a in range(0, n, 100_000):
            m = min(100_000, n - a)
            x = self.base[self.rng.integers(0, len(self.base), m)]
            x = x + self.sigma * (self.rng.normal(size=(m, len(self.dirs))).astype(np.float32) @ self.dirs)
            x += self.iso * self.rng.normal(size=x.shape).astype(np.float32)
            out[a:a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def ground_truth(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    import faiss

    gt_d = np.full((len(xq), k), -np.inf, np.float32)
    gt_i = np.full((len(xq), k), -1, np.int64)
    for a in range(0, len(xb), 200_000):
        idx = faiss.IndexFlatIP(xb.shape[1])
        idx.add(xb[a:a + 200_000])
        d, i = idx.search(xq, k)
        d_all, i_all = np.hstack([gt_d, d]), np.hstack([gt_i, i + a])
        top = np.argsort(-d_all, axis=1)[:, :k]
        gt_d, gt_i = np.take_along_axis(d_all, top, 1), np.take_along_axis(i_all, top, 1)
    return gt_i


def bench(kind: str, xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, k: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)  # build with every core
    resolved = B.choose_kind(kind, len(xb))
    rss0 = rss_bytes()
    t = time.perf_counter()
    idx = V.FaissIndex(xb.shape[1], resolved)
    for a in range(0, len(xb), 250_000):  # the first batch trains; the rest are incremental adds
        idx.add(np.arange(a, min(a + 250_000, len(xb)), dtype=np.int64), xb[a:a + 250_000])
    build = time.perf_counter() - t
    rss = rss_bytes() - rss0
    with tempfile.TemporaryDirectory() as tmp:
        idx.save(tmp, 1)
        size = os.path.getsize(os.path.join(tmp, V.FAISS_FILE))
    faiss.omp_set_num_threads(1)
    for q in xq[:10]:
        idx.search(q[None], k)
    lat, found = [], []
    for q in xq:
        t = time.perf_counter()
        _, ids = idx.search(q[None], k)
        lat.append((time.perf_counter() - t) * 1000)
        found.append(ids[0])
    per_query = np.array([len(set(f.tolist()) & set(g.tolist())) / k for f, g in zip(found, gt)])
    del idx
    return {"kind": kind, "resolved": resolved, "n": len(xb), "build_s": build, "bytes": size, "rss": rss,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "recall": float(per_query.mean()), "recall_se": float(per_query.std() / np.sqrt(len(per_query)))}


def mib(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB" if b >= 2**20 else f"{b / 1024:,.0f} KiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1k,10k,100k,1M")
    ap.add_argument("--kinds", default="auto,flat")
    ap.add_argument("--base", default=None, help="vectors.faiss of a flat index whose vectors anchor the clusters "
                                                 "(default: the newest /tmp/idx-squad/data-*/vectors.faiss if any)")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (recall's standard error is printed; "
                                                              "200 gave it to about ±0.01 between builds)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base_path = args.base
    if base_path is None:
        found = sorted(glob.glob("/tmp/idx-squad/data-*/vectors.faiss"))
        base_path = found[-1] if found else None
    rng = np.random.default_rng(args.seed)
    base = load_base(base_path, 384, rng)
    print(f"vectors: {'perturbed real MiniLM vectors of ' + base_path if base_path else 'Gaussian mixture'}"
          f" ({len(base)} centres); {args.queries} held-out queries; k={args.k}; 1 OpenMP thread for search; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    gen = Generator(base, args.seed)
    xq = gen.draw(args.queries)
    rows = []
    for n in map(parse_size, args.sizes.split(",")):
        xb = gen.draw(n)
        gt = ground_truth(xb, xq, args.k)
        for kind in args.kinds.split(","):
            r = bench(kind, xb, xq, gt, args.k)
            rows.append(r)
            print(f"  {r['n']:>9,} {r['kind']}->{r['resolved']}: build {r['build_s']:.1f}s, {mib(r['bytes'])}, "
                  f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
                  f"recall@10 {r['recall']:.3f} ± {r['recall_se']:.3f}", flush=True)
        del xb
    print(f"\npeak RSS of this process: {mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}\n")
    print("| vectors | kind | index | build (s) | index file | RSS delta | p50 (ms) | p99 (ms) | recall@10 |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    print(f"| target (1M) | | | | ≤ {mib(TARGETS['memory'])} | | ≤ {TARGETS['p50_ms']:.0f} | | ≥ {TARGETS['recall']} |")
    for r in rows:
        ok = r["bytes"] <= TARGETS["memory"] and r["p50"] <= TARGETS["p50_ms"] and r["recall"] >= TARGETS["recall"]
        print(f"| {r['n']:,} | {r['kind']} | {r['resolved']} | {r['build_s']:.1f} | {mib(r['bytes'])} | "
              f"{mib(max(r['rss'], 0))} | {r['p50']:.2f} | {r['p99']:.2f} | {r['recall']:.3f} ± {r['recall_se']:.3f}"
              f"{'' if ok else ' ✗'} |")


if __name__ == "__main__":
    main()
