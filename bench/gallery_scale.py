"""Gallery search at scale: exact (``flat``) vs approximate (``ivf``) ``index.VectorIndex``.

For 1k, 10k, 100k and 1M people (``--quick``: 1k and 10k) it reports search latency per single
query and per batch of 32 (median, p95), recall@1 of IVF against exact search, the exact top-1
identification rate, build time and index bytes per person, and plots latency against size.

Why synthetic people shaped like real ones: IVF's speed and recall depend on how vectors cluster,
so uniform random vectors would flatter or punish it unrealistically. Person vectors are real
embeddings (the model's, on celeba1k identities it never trained on) plus gaussian noise,
renormalised. A query is a person's vector moved the way a real image differs from its own
person: a real image's offset from the mean of the other images of its identity (its size and
its direction, so the within-person spread keeps the real, non-isotropic shape). Without a model
or data it falls back to clustered synthetic vectors and says so.

    OMP_NUM_THREADS=1 python -m bench.gallery_scale --quick --model /tmp/model.pt
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from index import VectorIndex

from . import common

DIM = 512
K = 5  # the product's Gallery.search default


# ---- the vectors -------------------------------------------------------------------------------

def real_embeddings(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(embeddings, identity labels, description) of held-out celeba1k images, cached under
    ``common.cache_dir()`` (never in the repository); None when model or data is missing."""
    celeba = common.data_dir(args, "celeba1k")
    model = Path(args.model) if args.model else None
    if celeba is None or model is None or not model.is_file():
        return None
    from recognizer import ModelArtifact, Recognizer

    from .datasets import model_split

    artifact = ModelArtifact.load(model)
    split = model_split(artifact, celeba, Path(args.splits) if args.splits else model.parent / "splits.json")
    print(split.describe())
    # identities the model never trained on: their embeddings look like a new enrollee's
    idx = split.splits.open_set
    labels = split.labels[idx]
    rng = np.random.default_rng(0)
    chosen: list[int] = []
    for c in rng.permutation(np.unique(labels))[: args.identities]:
        members = idx[labels == c]
        chosen.extend(rng.permutation(members)[: args.per_identity].tolist())
    chosen.sort()
    paths = [split.dataset.paths[i] for i in chosen]
    key = hashlib.sha256((artifact.version + "|" + "|".join(p.name for p in paths)).encode()).hexdigest()[:16]
    cache = common.cache_dir() / f"gallery_scale-embeddings-{key}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            emb = data["embeddings"]
    else:
        start = time.perf_counter()
        emb = Recognizer(artifact).embed_images(paths, crop_mode="frame")
        np.savez(cache, embeddings=emb)
        print(f"embedded {len(paths)} images in {time.perf_counter() - start:.1f} s (cached: {cache})")
    what = (f"real embeddings: model {artifact.version}, {len(paths)} celeba1k images of "
            f"{len(np.unique(split.labels[chosen]))} held-out identities (crop_mode=frame)")
    return emb.astype(np.float32), split.labels[chosen], what


def synthetic_embeddings(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Stand-in when there is no model/data: 100 clustered 'identities' of 10 images each."""
    centres = normalize(rng.standard_normal((100, DIM), dtype=np.float32))
    labels = np.repeat(np.arange(100), 10)
    emb = normalize(centres[labels] + noise_for_cosine(0.6, rng, (len(labels), DIM)))
    return emb, labels, "SYNTHETIC FALLBACK: clustered random vectors (no model or no celeba1k data given)"


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def noise_for_cosine(cos: float, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Gaussian noise that moves a unit vector to about ``cos`` from where it was
    (||noise||^2 ~ d*sigma^2, so cos ~ 1/sqrt(1 + d*sigma^2))."""
    sigma = np.sqrt((1.0 / float(np.clip(cos, 0.05, 0.999)) ** 2 - 1.0) / DIM)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def within_person_offsets(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each image of a person with 2+ images: ``a`` = cosine to the mean of the person's
    other images and ``delta`` = the rest of the image (its part orthogonal to that mean), so
    ``image = a * mean + delta``. A query for person p is then ``a * p + delta``."""
    a, delta = [], []
    for c in np.unique(labels):
        members = emb[labels == c]
        for i in range(len(members)):
            others = np.delete(members, i, axis=0)
            if not len(others):
                continue
            m = others.sum(0)
            m /= np.linalg.norm(m)
            a.append(float(members[i] @ m))
            delta.append(members[i] - a[-1] * m)
    return np.array(a, np.float32), np.stack(delta).astype(np.float32)


def embedding_stats(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cosines between two images of one person, image vs. its person, and between people."""
    sims = emb @ emb.T
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    classes = np.unique(labels)
    means = normalize(np.stack([emb[labels == c].mean(0) for c in classes]))
    between = (means @ means.T)[np.triu_indices(len(classes), k=1)]
    a, _ = within_person_offsets(emb, labels)
    return {"same_person_image_pair_cos_median": float(np.median(sims[i[same], j[same]])),
            "image_vs_own_mean_of_others_cos_median": float(np.median(a)),
            "different_people_mean_vector_cos_median": float(np.median(between)),
            "different_people_mean_vector_cos_p99": float(np.percentile(between, 99))}


def make_people(bases: np.ndarray, n: int, sibling_cos: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` person vectors: a random real embedding plus noise, renormalised (see :func:`fill_people`)."""
    return fill_people(np.empty((n, DIM), np.float32), bases, sibling_cos, rng)


def fill_people(out: np.ndarray, bases: np.ndarray, sibling_cos: float, rng: np.random.Generator) -> np.ndarray:
    """Fill ``out`` (n, DIM), an array or a memory map larger than RAM, with person vectors in
    chunks (1M x 512 float32 is 2 GB; the noise would double that). The draws do not depend on
    ``out``'s kind, so a 10M map is made the same way as a 1M array."""
    # two people made from the same base end up ~sibling_cos apart: cos(a,b) ~ 1/(1+d*sigma^2)
    sigma = np.float32(np.sqrt((1.0 / sibling_cos - 1.0) / DIM))
    n = len(out)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        pick = rng.integers(0, len(bases), stop - start)
        out[start:stop] = normalize(bases[pick] + rng.standard_normal((stop - start, DIM), dtype=np.float32) * sigma)
    return out


def make_queries(people: np.ndarray, count: int, offsets_a: np.ndarray, offsets_delta: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(true person of each query, queries): ``count`` random people, each moved by a real
    within-person offset (see :func:`within_person_offsets`); ``people`` may be a memory map."""
    truth = rng.integers(0, len(people), count)
    pick = rng.integers(0, len(offsets_a), count)
    return truth, normalize(offsets_a[pick, None] * people[truth] + offsets_delta[pick])


# ---- measurements ------------------------------------------------------------------------------

def python_bytes(index: VectorIndex) -> int:
    """The Python-side id set VectorIndex keeps beside FAISS (set table + int objects)."""
    ids = index._ids  # noqa: SLF001 - measuring the private bookkeeping is the point
    return sys.getsizeof(ids) + sum(sys.getsizeof(i) for i in ids)


def measure(index: VectorIndex, singles: np.ndarray, batches: list[np.ndarray], single_repeats: int,
            batch_repeats: int) -> dict:
    """Latency of ``index.search`` for one query and for 32 at a time (medians/p95 over repeats)."""
    it = iter(range(10**9))
    single = common.time_calls(lambda: index.search(singles[next(it) % len(singles)], K), single_repeats, warmup=3)
    it2 = iter(range(10**9))
    batch = common.time_calls(lambda: index.search(batches[next(it2) % len(batches)], K), batch_repeats, warmup=1)
    return {"single": common.stats(single), "batch32": common.stats(batch)}


def run(args: argparse.Namespace) -> dict:
    common.set_threads(args.threads)
    rng = np.random.default_rng(0)
    real = None if args.synthetic else real_embeddings(args)
    emb, labels, source = real if real is not None else synthetic_embeddings(rng)
    st = embedding_stats(emb, labels)
    sibling_cos = max(0.05, st["different_people_mean_vector_cos_p99"])
    offsets_a, offsets_delta = within_person_offsets(emb, labels)
    print(f"vectors: {source}")
    print(f"synthetic people: one of those {len(emb)} embeddings + gaussian noise, so two people made from the "
          f"same embedding are ~{sibling_cos:.2f} apart (p99 of real different-people cosines); queries: a person "
          f"moved by one of {len(offsets_a)} real within-person offsets (real image vs own person: median cos "
          f"{st['image_vs_own_mean_of_others_cos_median']:.2f}; two real images of one person: "
          f"{st['same_person_image_pair_cos_median']:.2f})")
    rows: list[dict] = []
    for n in args.sizes:
        people = make_people(emb, n, sibling_cos, rng)
        truth, queries = make_queries(people, args.queries, offsets_a, offsets_delta, rng)
        query_cos = float(np.median(np.sum(queries * people[truth], axis=1)))
        batches = [queries[i:i + 32] for i in range(0, len(queries) - 31, 32)]
        ids = np.arange(n, dtype=np.int64)
        start = time.perf_counter()
        flat = VectorIndex.build(ids, people, kind="flat")
        flat_build = time.perf_counter() - start
        _, exact = flat.search(queries, K)
        base = {"people": n, "source": "real" if real is not None else "synthetic", "query_cos_median": query_cos}
        rows.append({**base, "index": "flat", "nlist": None, "nprobe": None, "build_s": flat_build,
                     "bytes_per_person": len(faiss.serialize_index(flat._index)) / n,  # noqa: SLF001
                     "python_bytes_per_person": python_bytes(flat) / n, "recall_at_1": 1.0,
                     "top1_identification": float(np.mean(exact[:, 0] == truth)),
                     **measure(flat, queries, batches, args.single_repeats, args.batch_repeats)})
        del flat
        start = time.perf_counter()
        ivf = VectorIndex.build(ids, people, kind="ivf")
        ivf_build = time.perf_counter() - start
        ivf_bytes = len(faiss.serialize_index(ivf._index)) / n  # noqa: SLF001
        py_bytes = python_bytes(ivf) / n
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            _, approx = ivf.search(queries, K)
            rows.append({**base, "index": "ivf", "nlist": ivf.nlist, "nprobe": ivf.nprobe,
                         "nprobe_requested": nprobe, "build_s": ivf_build,
                         "bytes_per_person": ivf_bytes, "python_bytes_per_person": py_bytes,
                         "recall_at_1": float(np.mean(approx[:, 0] == exact[:, 0])),
                         "top1_identification": float(np.mean(approx[:, 0] == truth)),
                         **measure(ivf, queries, batches, args.single_repeats, args.batch_repeats)})
        del ivf, people
        print(f"  {n:>9,} people done (median cosine query vs its person {query_cos:.2f})", flush=True)
    return {"source": source, "embedding_stats": st, "sibling_cos": sibling_cos, "k": K, "threads": args.threads,
            "rows": rows}


def table(result: dict) -> str:
    flat = {r["people"]: r for r in result["rows"] if r["index"] == "flat"}
    out = []
    for r in result["rows"]:
        f = flat[r["people"]]
        name = "flat (exact)" if r["index"] == "flat" else f"ivf nlist={r['nlist']} nprobe={r['nprobe']}"
        out.append([f"{r['people']:,}", name, common.ms(r["single"]["median"]), common.ms(r["single"]["p95"]),
                    common.ms(r["batch32"]["median"]), common.ms(r["batch32"]["p95"]),
                    common.ratio(f["single"]["median"], r["single"]["median"]),
                    common.ratio(f["batch32"]["median"], r["batch32"]["median"]),
                    common.num(r["recall_at_1"]), common.num(r["top1_identification"]), f"{r['build_s']:.2f}",
                    f"{r['bytes_per_person']:.0f} + {r['python_bytes_per_person']:.0f}"])
    headers = ["people", "index", "1 query ms (median)", "p95", "32 queries ms (median)", "p95",
               "speed-up vs flat (1)", "speed-up vs flat (32)", "recall@1 vs flat", "top-1 id", "build s",
               "bytes/person (faiss + python)"]
    return common.markdown_table(headers, out, align="llrrrrrrrrrr")


def plot(result: dict, args: argparse.Namespace) -> Path:
    fig, axes = common.new_figure(2)
    for key, ax, title in [("single", axes[0], "one query"), ("batch32", axes[1], "batch of 32 queries")]:
        series: dict[str, list[tuple[int, float, float]]] = {}
        for r in result["rows"]:
            # nprobe is capped at nlist for small galleries: group by what was asked for
            name = "flat (exact)" if r["index"] == "flat" else f"ivf nprobe={r['nprobe_requested']}"
            series.setdefault(name, []).append((r["people"], r[key]["median"] * 1e3, r[key]["p95"] * 1e3))
        for name, pts in series.items():
            x, med, p95 = zip(*pts, strict=True)
            line, = ax.plot(x, med, "o-", label=f"{name} median")
            ax.plot(x, p95, ":", color=line.get_color(), alpha=0.7, label=f"{name} p95")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("people in the gallery")
        ax.set_ylabel("search latency, ms")
        ax.set_title(f"{title} (k={result['k']}, {result['threads']} thread(s))")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return common.save_figure(fig, "gallery_scale", args)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model", default=None, help="model artifact (copy runs/<run>/model.pt first: it is rewritten "
                   "every epoch); without it: synthetic vectors")
    p.add_argument("--splits", default=None, help="the run's splits.json (default: next to --model)")
    p.add_argument("--synthetic", action="store_true", help="use clustered synthetic vectors even with a model")
    p.add_argument("--sizes", default=None, help="comma-separated gallery sizes (default 1k,10k,100k,1M; quick 1k,10k)")
    p.add_argument("--nprobe", default="8,32", help="IVF nprobe values to compare (32 is the product default)")
    args = p.parse_args(argv)
    args.sizes = [int(float(s)) for s in (args.sizes or ("1e3,1e4" if args.quick else "1e3,1e4,1e5,1e6")).split(",")]
    args.nprobe = [int(s) for s in args.nprobe.split(",")]
    args.identities, args.per_identity = (20, 10) if args.quick else (50, 40)
    args.queries = 512 if args.quick else 2048
    args.single_repeats, args.batch_repeats = (100, 16) if args.quick else (300, 40)
    start = time.perf_counter()
    result = run(args)
    png = plot(result, args)
    text = f"{table(result)}\n\nvectors: {result['source']}; top-1 id = the query's own person ranked first"
    return common.finish("gallery_scale", args, result, text, start, [png])


if __name__ == "__main__":
    raise SystemExit(main())
