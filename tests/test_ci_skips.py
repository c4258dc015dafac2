"""The CI rule of resources.py: a skipped face-data or browser test fails a CI run while the
resource is there, and stays a skip where it is truly absent or outside CI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resources import ci_failure

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(("needs", "environ", "sibling", "chromium", "fails"), [
    ({"face_data"}, {"CI": "true", "FACE_DATA": "/data"}, False, None, True),
    ({"face_data"}, {"CI": "true", "FACE_DATA": "/no/such/folder"}, False, None, True),  # broken setup
    ({"face_data"}, {"CI": "true"}, True, None, True),         # ../shared/data is there, FACE_DATA unset
    ({"face_data"}, {"CI": "true"}, False, None, False),       # truly absent
    ({"face_data"}, {"CI": "false", "FACE_DATA": "/data"}, True, None, False),  # not CI
    ({"face_data"}, {"FACE_DATA": "/data"}, True, None, False),
    ({"browser"}, {"CI": "true"}, False, "/usr/bin/chromium", True),
    ({"browser"}, {"CI": "1"}, False, "/usr/bin/chromium", True),
    ({"browser"}, {"CI": "true"}, True, None, False),          # no chromium: truly absent
    ({"browser"}, {}, False, "/usr/bin/chromium", False),
    (set(), {"CI": "true", "FACE_DATA": "/data"}, True, "/usr/bin/chromium", False),  # other skips are free
])
def test_ci_failure_rule(tmp_path, needs, environ, sibling, chromium, fails):
    root = tmp_path / "checkout"
    root.mkdir()
    if sibling:
        (tmp_path / "shared" / "data").mkdir(parents=True)
    why = ci_failure(needs, environ, root, chromium)
    assert (why is not None) == fails, why


def _run_inner(tmp_path: Path, environ: dict[str, str]) -> str:
    """A pytest run of its own, with the hooks, over two face-data tests that skip."""
    (tmp_path / "conftest.py").write_text(
        "from resources import pytest_runtest_makereport, pytest_runtest_setup  # noqa: F401\n")
    (tmp_path / "test_inner.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.face_data\ndef test_by_mark():\n    pass\n\n"
        "@pytest.mark.face_data\ndef test_by_call():\n    pytest.skip('a file is missing')\n\n"
        "def test_plain():\n    pytest.skip('not a resource')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "FACE_DATA")}
    env.update(environ, PYTHONPATH=str(HERE), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # a fast start
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-o",
                           "markers=face_data", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    return done.stdout + done.stderr


def test_ci_run_fails_on_skipped_face_data_tests(tmp_path):
    out = _run_inner(tmp_path, {"CI": "true", "FACE_DATA": str(tmp_path / "absent")})  # set, but no folder
    assert "1 skipped, 2 errors" in out, out  # a skip at setup fails as an error
    assert "CI=true and face_data is present, but this test was skipped: Skipped: real face images" in out
    data = tmp_path / "data"
    data.mkdir()
    out = _run_inner(tmp_path, {"CI": "true", "FACE_DATA": str(data)})
    assert "1 failed, 1 passed, 1 skipped" in out, out  # a skip inside the test fails it
    assert "CI=true and face_data is present, but this test was skipped: Skipped: a file is missing" in out


def test_outside_ci_they_stay_skips(tmp_path):
    out = _run_inner(tmp_path, {"FACE_DATA": str(tmp_path / "absent")})
    assert "3 skipped" in out and "failed" not in out and "error" not in out, out
