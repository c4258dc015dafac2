"""Shared benchmark plumbing: argument defaults, timing with repeats, statistics, ratio
formatting, markdown tables, JSON results and plots under ``bench/results/`` (git-ignored).

Every benchmark compares A with B in the same process and run, so both see the same machine
load; results are medians and 95th percentiles over repeats, never a single timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recognizer.artifact import default_model_path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# The model a benchmark measures unless --model names another: MODEL_PATH, else the shipped one.
DEFAULT_MODEL = default_model_path()


# ---- command line --------------------------------------------------------------------------------

def parser(description: str | None) -> argparse.ArgumentParser:
    """The options every benchmark shares: ``--quick``, ``--threads``, ``--data``, ``--out``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, finishes in under a minute (a smoke run)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1),
                   help="torch/faiss CPU threads (default: $OMP_NUM_THREADS or 1)")
    p.add_argument("--data", default=os.environ.get("FACE_DATA", str(ROOT.parent / "shared" / "data")),
                   help="the shared face data folder (default: $FACE_DATA, else ../shared/data)")
    p.add_argument("--out", default=None, help="JSON result path (default: bench/results/<name>[-quick].json)")
    return p


def data_dir(args: argparse.Namespace, sub: str) -> Path | None:
    """``<data>/<sub>`` if it exists, else None (callers fall back and say so)."""
    path = Path(args.data) / sub if args.data else None
    return path if path is not None and path.is_dir() else None


def require_data(args: argparse.Namespace, sub: str) -> Path:
    """``<data>/<sub>``, or exit saying what is missing (a benchmark that cannot run without it)."""
    path = data_dir(args, sub)
    if path is None:
        raise SystemExit(f"needs {sub}/ under --data ({args.data})")
    return path


def set_threads(n: int) -> None:
    """Pin torch and faiss to ``n`` threads so A and B get the same CPU. faiss only where it is
    installed: a lent GPU machine has torch but no faiss, and the training benchmark needs none."""
    import torch

    torch.set_num_threads(max(1, n))
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(max(1, n))


# ---- timing and statistics -----------------------------------------------------------------------

def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` calls, after ``warmup`` untimed calls
    (first calls pay for allocation, lazy init and cold caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median and p95 (what the tables report), plus mean/min/max/n for the JSON."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0, "median": float("nan"), "p95": float("nan"), "mean": float("nan"),
                "min": float("nan"), "max": float("nan")}
    return {"n": int(arr.size), "median": float(np.median(arr)), "p95": float(np.percentile(arr, 95)),
            "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


def ms(seconds: float) -> str:
    """Seconds as milliseconds with sensible precision."""
    v = seconds * 1000
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def ratio(a: float, b: float) -> str:
    """``a / b`` as ``"3.2x"``; ``"n/a"`` when undefined."""
    if not (np.isfinite(a) and np.isfinite(b)) or b == 0:
        return "n/a"
    r = a / b
    return f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def num(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def winner(a: float, b: float, names: tuple[str, str] = ("ours", "dlib"), higher_is_better: bool = True,
           tolerance: float = 0.0) -> str:
    """Which of two numbers is better, in words; within ``tolerance`` it is a tie."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return "n/a"
    if abs(a - b) <= tolerance:
        return "tie"
    return names[0] if (a > b) == higher_is_better else names[1]


# ---- output --------------------------------------------------------------------------------------

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one char per column (l/r), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = (c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if a == "r" else ":" + "-" * (w + 1)
                          for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def environment(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Where and how a result was made, so numbers from different runs are not mixed up."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except Exception:  # not a git checkout: still write results
        commit = ""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    env = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "python": platform.python_version(),
           "torch": torch.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_avg_1min": load, "git_commit": commit, "cuda": torch.cuda.is_available()}
    if args is not None:
        env["args"] = {k: v for k, v in vars(args).items()}
    return env


def result_path(name: str, args: argparse.Namespace, suffix: str = ".json") -> Path:
    """``bench/results/<name>[-quick]<suffix>``, or next to ``--out`` when given."""
    if args.out:
        out = Path(args.out)
        return out if suffix == ".json" else out.with_suffix(suffix)
    return RESULTS / f"{name}{'-quick' if args.quick else ''}{suffix}"


def write_json(name: str, args: argparse.Namespace, payload: dict[str, Any]) -> Path:
    """Write ``payload`` plus the environment as JSON; returns the path."""
    path = result_path(name, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "quick": bool(args.quick), "environment": environment(args), **payload}
    path.write_text(json.dumps(body, indent=1, default=_jsonable))
    return path


def finish(name: str, args: argparse.Namespace, payload: dict[str, Any], text: str, start: float,
           also_wrote: Sequence[Path | None] = ()) -> int:
    """The end of every benchmark: print its tables, write the JSON, say how long it took."""
    print()
    print(text)
    path = write_json(name, args, payload)
    wrote = " and ".join(str(p) for p in (path, *also_wrote) if p)
    print(f"\ndone in {time.perf_counter() - start:.0f} s; wrote {wrote}")
    return 0


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def new_figure(ncols: int = 1, size: tuple[float, float] = (6.5, 4.5)):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]))


def save_figure(fig, name: str, args: argparse.Namespace) -> Path:
    import matplotlib.pyplot as plt

    path = result_path(name, args, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def cache_dir() -> Path:
    """Where benchmarks cache embeddings of the shared data: outside the repository, because
    nothing derived from those images may be committed (``$BENCH_CACHE`` overrides)."""
    path = Path(os.environ.get("BENCH_CACHE", "/tmp/facerec-bench-cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(items: Sequence[Any], what: str) -> Iterable[Any]:
    """A tqdm bar on stderr for long loops (hidden for under 200 items)."""
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="img", disable=len(items) < 200, mininterval=5.0)
