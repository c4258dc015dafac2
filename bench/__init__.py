"""Benchmarks (issue #5): run as ``python -m bench.<name> [--quick]``; results go to bench/results/.

Imported before any benchmark module, so this is where OpenMP is told to let idle threads sleep:
spinning threads slow a busy 2-core machine down many times over (see recognizer/__init__.py),
and libgomp reads the setting once, when torch or faiss first loads it.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
