"""What the optional tests need (real face data, a browser) and the rule that keeps CI honest
about them: under ``CI=true`` a test that needs face data or the browser must not be skipped
while that resource is there. Such a skip fails the run instead; a skip stays a skip only
where the resource is truly absent (no ``FACE_DATA`` and no ``../shared/data`` beside the
checkout, as ``.ci/run`` looks for it; no Chromium binary).

Tests ask for a resource with the ``face_data`` / ``browser`` marks; conftest.py installs the
two hooks below."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

import pytest

ROOT = Path(__file__).resolve().parent.parent
FACE_DATA_REASON = "real face images not available: set FACE_DATA=../shared/data to run"


def face_data() -> Path | None:
    value = os.environ.get("FACE_DATA")
    return Path(value) if value and Path(value).is_dir() else None


def chromium() -> str | None:
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return exe if exe and os.access(exe, os.X_OK) else None


def browser_unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed: run scripts/browser-deps.sh"
    if chromium() is None:
        return "no chromium binary (apt-get install chromium, or set CHROMIUM): run scripts/browser-deps.sh"
    return None


def in_ci(environ: Mapping[str, str]) -> bool:
    return environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def present_resources(environ: Mapping[str, str], root: Path, chromium_path: str | None) -> set[str]:
    """The resources that are there (or meant to be: a FACE_DATA that names a missing folder
    is a broken setup, not an absent one)."""
    present = set()
    if environ.get("FACE_DATA") or (root.parent / "shared" / "data").is_dir():
        present.add("face_data")
    if chromium_path:
        present.add("browser")
    return present


def ci_failure(needs: set[str], environ: Mapping[str, str], root: Path, chromium_path: str | None) -> str | None:
    """Why a skip of a test needing ``needs`` must fail the run, or None if it may stay a skip."""
    if not in_ci(environ):
        return None
    broken = sorted(needs & present_resources(environ, root, chromium_path))
    if not broken:
        return None
    return f"CI=true and {' and '.join(broken)} is present, but this test was skipped"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("face_data") and face_data() is None:
        pytest.skip(FACE_DATA_REASON)
    if item.get_closest_marker("browser"):
        reason = browser_unavailable()
        if reason:
            pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    needs = {name for name in ("face_data", "browser") if item.get_closest_marker(name)}
    why = ci_failure(needs, os.environ, ROOT, chromium()) if needs else None
    if why:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{why}: {reason}"
