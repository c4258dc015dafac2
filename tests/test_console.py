"""The web console (``/``) in a real browser: Debian's Chromium driven by Playwright.

A real HTTP server (the app in a thread, werkzeug ``make_server``) runs against the test
redis-server and the tiny model, with an RQ worker thread beside it, and the tests use the page
the way an operator would: type a name, pick photos, watch the job, identify a group photo,
read the boxes and the roster, download the CSV, delete with confirmation, enter an API key.

Skipped (with the reason) when Playwright or a Chromium binary is missing: scripts/browser-deps.sh
installs both. Screenshots go to test-artifacts/console/ (git-ignored).
"""
from __future__ import annotations

import csv
import io
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import face_data, requires_face_data
from resources import chromium as chromium_binary
from service_support import encode, head_crop, run_worker

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
ADMIN, READ = "console-admin-key", "console-read-key"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


# Skipped without Playwright or Chromium, except in CI while Chromium is there (see resources.py).
requires_browser = pytest.mark.browser


# -- images ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(astronaut) -> dict[str, bytes]:
    head = head_crop(astronaut)
    pair = np.concatenate([head, np.full((head.shape[0], 40, 3), 235, np.uint8), head], axis=1)
    ramp = np.linspace(40, 220, 320, dtype=np.uint8)
    landscape = np.stack([np.tile(ramp, (200, 1)), np.full((200, 320), 150, np.uint8),
                          np.tile(ramp[::-1], (200, 1))], axis=-1)
    small = np.asarray(Image.fromarray(head).resize((head.shape[1] // 2, head.shape[0] // 2), Image.BILINEAR))
    big_small = np.full((head.shape[0], head.shape[1] + small.shape[1] + 40, 3), 235, np.uint8)
    big_small[:, :head.shape[1]] = head
    big_small[-small.shape[0]:, -small.shape[1]:] = small
    return {
        "astronaut.jpg": encode(astronaut, quality=90),
        "big-small.jpg": encode(big_small, quality=90),  # the same face, and a bystander half its size
        "head.jpg": encode(head, quality=92),
        "pair.jpg": encode(pair, quality=90),          # two copies of the same face, side by side
        "landscape.png": encode(landscape, "PNG"),      # no face
        "notes.jpg": b"these are meeting notes, not a photo\n",
    }


def payload(images: dict[str, bytes], *names: str) -> list[dict]:
    mime = {"jpg": "image/jpeg", "png": "image/png"}
    return [{"name": n, "mimeType": mime[n.rsplit(".", 1)[1]], "buffer": images[n]} for n in names]


# -- a real server, a worker, a browser ----------------------------------------------------


class LiveServer:
    """The app served over HTTP by werkzeug in a thread, optionally with an RQ worker thread."""

    def __init__(self, app, redis_url: str, worker: bool) -> None:
        import redis
        from werkzeug.serving import make_server

        self.app = app
        self.redis = redis.Redis.from_url(redis_url)
        self.identify_delay = 0.0  # seconds every /v1/identify answer is held back: a slow server
        self.httpd = make_server("127.0.0.1", 0, self._serve, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.httpd.serve_forever, name="console-http", daemon=True)]
        if worker:
            self.threads.append(threading.Thread(target=self._work, name="console-worker", daemon=True))
        for t in self.threads:
            t.start()

    def _serve(self, environ, start_response):
        if self.identify_delay and environ.get("PATH_INFO") == "/v1/identify":
            time.sleep(self.identify_delay)
        return self.app(environ, start_response)

    def _work(self) -> None:
        from service import jobs

        while not self.stop.is_set():
            try:
                jobs.set_recognizer(self.app.extensions["facerec"].recognizer)  # never load another model
                run_worker(self.redis)
            except Exception as exc:  # keep serving; a failing job shows up in the test itself
                print(f"console worker: {exc!r}")
            self.stop.wait(0.1)

    def reset(self) -> None:
        """An empty gallery (and this process's cache following it), answering at full speed."""
        self.identify_delay = 0.0
        self.redis.flushdb()
        self.app.extensions["facerec"].cache.rebuild()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        for t in self.threads:
            t.join(10)
        self.httpd.server_close()
        self.redis.close()

    # API shortcuts for setting up and checking what the page did
    def api(self, method: str, path: str, key: str | None = None, **kwargs) -> requests.Response:
        headers = {"X-API-Key": key} if key else {}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def enroll(self, name: str, image: bytes | None, key: str | None = None) -> str:
        pid = self.api("POST", "/v1/people", key, json={"name": name}).json()["person_id"]
        if image is not None:
            r = self.api("POST", f"/v1/people/{pid}/images", key, files={"image": ("face.jpg", image, "image/jpeg")})
            assert r.status_code == 201, r.text
        return pid


def _server(redis_server, service_recognizer, tiny_model, db: int, worker: bool, **settings) -> LiveServer:
    from service.app import create_app

    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    redis_server.client(db=db).flushdb()
    app = create_app({"REDIS_URL": url, "MODEL_PATH": str(tiny_model), "RECOGNIZER": service_recognizer,
                      "TESTING": True, **settings})
    return LiveServer(app, url, worker)


@pytest.fixture(scope="module")
def open_server(redis_server, service_recognizer, tiny_model):
    from service import jobs

    server = _server(redis_server, service_recognizer, tiny_model, db=5, worker=True,
                     ADMIN_API_KEYS="", READ_API_KEYS="")
    yield server
    server.close()
    jobs.set_recognizer(None)


@pytest.fixture(scope="module")
def keyed_server(redis_server, service_recognizer, tiny_model):
    server = _server(redis_server, service_recognizer, tiny_model, db=6, worker=False,
                     ADMIN_API_KEYS=ADMIN, READ_API_KEYS=READ)
    yield server
    server.close()


@pytest.fixture
def live(open_server):
    open_server.reset()
    return open_server


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright):
    """Chromium as on a machine with no camera."""
    chromium = playwright.chromium.launch(executable_path=chromium_binary(), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser):
    yield from _page(browser)


def _page(browser, **options):
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True, **options)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page, name: str, viewport: dict | None = None) -> Path:
    if viewport:
        page.set_viewport_size(viewport)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def file_row(page, name: str):
    return page.locator("#enroll-list li", has=page.locator(".file-name", has_text=name))


# -- the page itself, without a browser --------------------------------------------------------


def test_console_files_are_served(service_app_factory):
    client = service_app_factory().test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '<script src="/console/console.js" defer></script>' in html and "/console/console.css" in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]  # no inline script can run
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    script = client.get("/console/console.js")
    assert script.status_code == 200 and script.mimetype in ("text/javascript", "application/javascript")
    assert client.get("/console/console.css").mimetype == "text/css"
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/vnd.microsoft.icon"
    assert Image.open(io.BytesIO(icon.data)).format == "ICO"
    missing = client.get("/console/nope.js")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"  # the API's error shape


# -- in the browser ------------------------------------------------------------------------


@requires_browser
def test_enroll_through_the_page(live, page, images):
    page.goto(live.url + "/")
    assert page.get_attribute("#tab-enroll", "aria-selected") == "true"
    page.wait_for_selector("#key-state:has-text('Open server')")
    page.wait_for_selector("#people-summary:has-text('Nobody is enrolled yet.')")

    page.fill("#enroll-name", "Eileen Collins")
    page.set_input_files("#enroll-files", payload(images, "astronaut.jpg", "landscape.png", "notes.jpg"))
    assert page.locator("#enroll-list li").count() == 3
    page.click("#enroll-submit")
    page.wait_for_selector("#enroll-status:has-text('Done')")
    assert page.locator("#enroll-status").inner_text() == \
        "Done: 3 of 3 photos processed: 1 enrolled, 1 no face, 1 unreadable."
    assert page.eval_on_selector("#enroll-progress", "p => [p.value, p.max]") == [3, 3]
    assert file_row(page, "astronaut.jpg").locator(".badge").inner_text() == "Enrolled"
    assert file_row(page, "landscape.png").locator(".badge").inner_text() == "No face"
    assert file_row(page, "notes.jpg").locator(".badge").inner_text() == "Unreadable"
    assert "not a readable image" in file_row(page, "notes.jpg").locator(".file-detail").inner_text()
    row = page.locator("#people tbody tr", has_text="Eileen Collins")
    page.wait_for_function("() => document.querySelector('#people .photo-count')?.textContent === '1'")
    assert row.locator(".photo-count").inner_text() == "1"
    shot(page, "enroll-desktop")

    # More photos of the same person, through the person's "Add photos" button (keyboard focus
    # lands on the file input): the same photo again, one with two faces of the same size
    # (refused: it is not clear who to enroll) and one where the person's face clearly dominates.
    page.click("button[aria-label='Add photos of Eileen Collins']")
    assert page.evaluate("document.activeElement.id") == "enroll-files"
    assert page.is_hidden("#enroll-name-field")
    page.set_input_files("#enroll-files", payload(images, "astronaut.jpg", "pair.jpg", "big-small.jpg"))
    assert page.locator("#enroll-list li").count() == 3  # a new batch replaces the finished one
    page.click("#enroll-submit")
    page.wait_for_selector("#enroll-status:has-text('Done')")
    assert file_row(page, "astronaut.jpg").locator(".badge").inner_text() == "Duplicate"
    assert file_row(page, "pair.jpg").locator(".badge").inner_text() == "Several faces"
    assert "2 faces of similar size" in file_row(page, "pair.jpg").locator(".file-detail").inner_text()
    assert file_row(page, "big-small.jpg").locator(".badge").inner_text() == "Enrolled: largest face"
    assert file_row(page, "big-small.jpg").locator(".file-detail").inner_text() == \
        "2 faces found; the largest was enrolled"
    assert page.inner_text("#enroll-status") == \
        "Done: 3 of 3 photos processed: 1 enrolled, 1 duplicate, 1 several faces."
    page.wait_for_function("() => document.querySelector('#people .photo-count')?.textContent === '2'")
    people = live.api("GET", "/v1/people").json()["people"]
    assert [(p["name"], p["image_count"]) for p in people] == [("Eileen Collins", 2)]
    shot(page, "enroll-phone", PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling


@requires_browser
@pytest.mark.parametrize("width", [DESKTOP["width"], PHONE["width"], 300])
def test_tab_strip_never_scrolls_vertically(live, page, width):
    """Nothing sticks out below the tab strip: with its sideways scrolling (overflow-x: auto)
    any vertical overflow would show a scrollbar in desktop Chromium (headless hides it)."""
    page.set_viewport_size({"width": width, "height": 800})
    page.goto(live.url + "/")
    for tab in ("#tab-enroll", "#tab-identify", "#tab-camera"):
        page.click(tab)
        strip = page.eval_on_selector(".tabs", "t => [t.scrollHeight, t.clientHeight, t.scrollWidth, t.clientWidth, "
                                      "getComputedStyle(t).overflowY]")
        assert strip[0] <= strip[1], f"tab strip overflows vertically at {width} px: {strip}"
        assert strip[4] == "hidden"
        tabs = page.eval_on_selector_all(".tabs [role=tab]", "ts => ts.map(t => t.getBoundingClientRect().bottom)")
        bottom = page.eval_on_selector(".tabs", "t => t.getBoundingClientRect().bottom")
        assert all(b <= bottom + 0.5 for b in tabs), (tabs, bottom)


@requires_browser
def test_delete_a_photo_and_a_person_with_confirmation(live, page, images):
    collins = live.enroll("Eileen Collins", images["head.jpg"])
    nobody = live.enroll("No Photo Yet", None)
    page.goto(live.url + "/")
    page.click("button[aria-label='Photos of Eileen Collins']")
    photos = page.locator(f"#photos-{collins}")
    photos.locator("li").first.wait_for()
    assert "face.jpg" in photos.inner_text()
    shot(page, "people-photos")

    delete = photos.locator("button[aria-label='Delete photo face.jpg of Eileen Collins']")
    delete.click()
    assert page.is_visible("#confirm-dialog")
    assert page.inner_text("#confirm-text") == "Delete the photo “face.jpg” of Eileen Collins?"
    page.click("#confirm-cancel")  # cancelled: nothing happens
    assert page.is_hidden("#confirm-dialog")
    assert live.api("GET", f"/v1/people/{collins}").json()["image_count"] == 1
    delete.click()
    page.click("#confirm-ok")
    page.wait_for_selector(f"#photos-{collins} :text('No photos of Eileen Collins are enrolled')")
    assert page.locator(f"tr[data-person-id='{collins}'] .photo-count").inner_text() == "0"
    assert live.api("GET", f"/v1/people/{collins}").json()["image_count"] == 0

    # Deleting a person by keyboard only: Enter opens the dialog with focus on Cancel, Tab, Enter.
    page.focus("button[aria-label='Delete No Photo Yet']")
    page.keyboard.press("Enter")
    assert page.is_visible("#confirm-dialog")
    assert page.evaluate("document.activeElement.id") == "confirm-cancel"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "confirm-ok"
    page.keyboard.press("Enter")
    page.wait_for_selector(f"tr[data-person-id='{nobody}']", state="detached")
    assert live.api("GET", f"/v1/people/{nobody}").status_code == 404
    assert page.locator("#people tbody th").all_inner_texts() == ["Eileen Collins"]


def _box_geometry(page) -> dict:
    return page.evaluate("""() => {
        const img = document.getElementById('identify-img');
        const r = img.getBoundingClientRect();
        return {img: [r.left, r.top, r.width, r.height, img.naturalWidth, img.naturalHeight],
                boxes: [...document.querySelectorAll('#identify-boxes .face-box')].map(b => {
                    const q = b.getBoundingClientRect();
                    return [q.left, q.top, q.width, q.height, b.textContent];
                })};
    }""")


def _assert_boxes_match(page, api_faces: list[dict]) -> None:
    """Every box drawn on the page sits where the API put the face, at the displayed scale."""
    geo = _box_geometry(page)
    left, top, width, height, natural_w, natural_h = geo["img"]
    assert width > 0 and natural_w > 0
    sx, sy = width / natural_w, height / natural_h
    assert len(geo["boxes"]) == len(api_faces)
    for (bl, bt, bw, bh, _), face in zip(geo["boxes"], api_faces):
        x0, y0, x1, y1 = face["box"]
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(natural_w, x1), min(natural_h, y1)
        assert bl == pytest.approx(left + x0 * sx, abs=1.5)
        assert bt == pytest.approx(top + y0 * sy, abs=1.5)
        assert bw == pytest.approx((x1 - x0) * sx, abs=1.5)
        assert bh == pytest.approx((y1 - y0) * sy, abs=1.5)


@requires_browser
def test_identify_group_photo_boxes_roster_and_csv(live, page, images):
    collins = live.enroll("Eileen Collins", images["head.jpg"])
    absent = live.enroll("Absent Person", None)
    page.goto(live.url + "/#identify")
    assert page.get_attribute("#tab-identify", "aria-selected") == "true"
    page.wait_for_selector("#roster-summary:has-text('0 of 2 people present.')")

    # The drop zone is a file input reachable by keyboard, with a visible focus ring.
    page.focus("#tab-identify")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "identify-file"
    assert page.eval_on_selector("#identify-drop", "e => getComputedStyle(e).outlineStyle") == "solid"

    # Enter on the focused zone opens the file picker. Headless Chromium now and then drops the
    # chooser event for a key press that follows another test's chooser closely, so one more press.
    chooser = open_chooser_with_enter(page)
    chooser.set_files(payload(images, "pair.jpg"))
    page.wait_for_selector("#identify-status:has-text('2 faces found')")
    assert page.inner_text("#identify-status") == "2 faces found in pair.jpg: 2 recognised, 0 unknown."
    labels = page.eval_on_selector_all("#identify-boxes .face-label", "ls => ls.map(l => l.title)")
    assert len(labels) == 2, labels
    assert all(re.fullmatch(rf"{i}\. Eileen Collins \d\.\d{{3,6}}", label) for i, label in enumerate(labels, 1)), labels
    assert page.locator("#identify-boxes .face-label").first.inner_text() == labels[0]
    api_faces = live.api("POST", "/v1/identify", files={"image": ("pair.jpg", images["pair.jpg"])}).json()["faces"]
    _assert_boxes_match(page, api_faces)
    lefts = [b[0] for b in _box_geometry(page)["boxes"]]
    assert lefts[0] != pytest.approx(lefts[1], abs=50)  # one box over each copy of the face
    assert page.locator("#identify-faces li").count() == 2
    rule = re.fullmatch(r"A face matches at score (\d\.\d{3,6}) or more \(the model's threshold\)\.",
                        page.inner_text("#identify-rule"))
    assert rule and float(rule.group(1)) == pytest.approx(live.app.extensions["facerec"].recognizer.threshold, abs=1e-3)

    roster = {r.locator("th").inner_text(): r.locator(".badge").inner_text()
              for r in page.locator("#roster tbody tr").all()}
    assert roster == {"Absent Person": "Absent", "Eileen Collins": "Present"}
    assert page.inner_text("#roster-summary") == "1 of 2 people present."
    shot(page, "identify-desktop")

    with page.expect_download() as download_info:
        page.click("#roster-csv")
    download = download_info.value
    assert download.suggested_filename.startswith("attendance-") and download.suggested_filename.endswith(".csv")
    text = Path(download.path()).read_bytes().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["name", "person_id", "status", "score", "seen_at", "photo"]
    assert [r[:3] for r in rows[1:]] == [["Absent Person", absent, "absent"], ["Eileen Collins", collins, "present"]]
    assert float(rows[2][3]) >= live.app.extensions["facerec"].recognizer.threshold
    assert rows[2][5] == "pair.jpg" and rows[2][4].endswith("Z") and rows[1][3:] == ["", "", ""]

    # The boxes follow the image at phone width too; labels that would overlap shrink to their number.
    shot(page, "identify-phone", PHONE)
    _assert_boxes_match(page, api_faces)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    label_rects = page.eval_on_selector_all("#identify-boxes .face-label", """labels => labels.map(l => {
        const r = l.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })""")
    (a0, a1, a2, a3), (b0, b1, b2, b3) = label_rects
    assert a2 <= b0 or b2 <= a0 or a3 <= b1 or b3 <= a1, label_rects
    assert page.locator("#identify-boxes .face-label").first.inner_text().startswith("1. Eileen Collins")

    # No face, then a file the server cannot read: its own message is shown.
    page.set_input_files("#identify-file", payload(images, "landscape.png"))
    page.wait_for_selector("#identify-status:has-text('No face found in landscape.png.')")
    assert page.locator("#identify-boxes .face-box").count() == 0
    assert page.inner_text("#roster-summary") == "1 of 2 people present."  # attendance accumulates
    page.set_input_files("#identify-file", payload(images, "notes.jpg"))
    page.wait_for_selector("#identify-error:visible")
    expected = live.api("POST", "/v1/identify", files={"image": ("notes.jpg", images["notes.jpg"])}).json()
    def addressless(text: str) -> str:  # the message names a Python object by its address
        return re.sub(r"0x[0-9a-f]+", "0x?", text)

    assert page.inner_text("#identify-error").startswith("not a readable image")
    assert addressless(page.inner_text("#identify-error")) == addressless(expected["message"])


@requires_browser
def test_identify_says_when_the_gallery_size_raised_the_threshold(redis_server, service_recognizer, tiny_model,
                                                                  page, images):
    """With STRANGER_RATE the page says why a face needs a higher score than the model's threshold.
    The tiny model has no measured stranger curve, so it gets a made-up one: the page's wording is
    what is tested here (the curve's use is in test_service_strangers.py)."""
    import copy

    from recognizer.stranger import StrangerCurve

    recognizer = copy.copy(service_recognizer)
    low = recognizer.threshold
    recognizer.strangers = StrangerCurve(model_version=recognizer.version, photos_per_person=1,
                                         thresholds=(low, low + (1 - low) / 2, 1.0), rates=(1e-2, 1e-3, 0.0),
                                         pairs=100_000, source="made up for the console test")
    server = _server(redis_server, recognizer, tiny_model, db=7, worker=False, ADMIN_API_KEYS="", READ_API_KEYS="",
                     STRANGER_RATE="0.01")
    try:
        server.enroll("Eileen Collins", images["head.jpg"])
        server.enroll("Someone Else", images["head.jpg"])
        page.goto(server.url + "/#identify")
        page.set_input_files("#identify-file", payload(images, "pair.jpg"))
        page.wait_for_selector("#identify-status:has-text('2 faces found')")
        answer = server.api("POST", "/v1/identify", files={"image": ("pair.jpg", images["pair.jpg"])}).json()
        assert answer["threshold_source"] == "stranger_rate" and answer["threshold"] > low
        rule = re.fullmatch(r"A face matches at score (\d\.\d{3,6}) or more: set so that a stranger matches any of "
                            r"the 2 people enrolled at most 1% of the time\.", page.inner_text("#identify-rule"))
        assert rule, page.inner_text("#identify-rule")
        assert float(rule.group(1)) == pytest.approx(answer["threshold"], abs=1e-3)
    finally:
        server.close()


@requires_browser
def test_api_key_prompt(keyed_server, page, images):
    keyed_server.reset()
    page.goto(keyed_server.url + "/")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", "not-the-key")
    page.click("#key-submit")
    page.wait_for_selector("#key-error:visible")
    wrong = keyed_server.api("GET", "/v1/people", "not-the-key")
    assert wrong.status_code == 401
    assert page.inner_text("#key-error") == wrong.json()["message"] == "the API key is not valid"
    shot(page, "api-key-wrong")

    page.fill("#key-input", READ)
    page.keyboard.press("Enter")
    page.wait_for_selector("#key-dialog", state="hidden")
    assert page.inner_text("#key-state") == "API key set for this tab"
    page.wait_for_selector("#people-summary:has-text('Nobody is enrolled yet.')")
    page.reload()  # kept for the browser session: no second prompt
    page.wait_for_selector("#people-summary:has-text('Nobody is enrolled yet.')")
    assert page.is_hidden("#key-dialog")
    assert page.evaluate("sessionStorage.getItem('facerec.apiKey')") == READ

    # A read key cannot enroll: the server's words are shown, and nothing is created.
    page.fill("#enroll-name", "Somebody")
    page.set_input_files("#enroll-files", payload(images, "head.jpg"))
    page.click("#enroll-submit")
    page.wait_for_selector("#enroll-error:visible")
    assert page.inner_text("#enroll-error") == \
        "this operation needs an admin API key; the key sent is a read-only key"
    assert keyed_server.api("GET", "/v1/people", ADMIN).json()["total"] == 0

    page.click("#key-forget")
    page.wait_for_selector("#key-dialog[open]")
    assert page.evaluate("sessionStorage.getItem('facerec.apiKey')") is None


@requires_browser
@requires_face_data
def test_couple_photo(live, page):
    photo = (face_data() / "photos" / "couple.jpg").read_bytes()
    files = [{"name": "couple.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    page.goto(live.url + "/#identify")
    page.set_input_files("#identify-file", files)
    page.wait_for_selector("#identify-status:has-text('2 faces found')")
    assert page.locator("#identify-boxes .face-label").all_inner_texts() == ["1. unknown", "2. unknown"]

    # Enroll the first partner from a crop of their own face, then look again.
    faces = live.api("POST", "/v1/identify", files={"image": ("couple.jpg", photo)}).json()["faces"]
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    x0, y0, x1, y1 = faces[0]["box"]
    m = 0.6 * (x1 - x0)
    crop = pixels[max(0, int(y0 - m)):int(y1 + m), max(0, int(x0 - m)):int(x1 + m)]
    live.enroll("First Partner", encode(crop, quality=92))
    page.reload()
    page.set_input_files("#identify-file", files)
    page.wait_for_selector("#identify-status:has-text('1 recognised')")
    labels = page.locator("#identify-boxes .face-label").all_inner_texts()
    assert labels[0].startswith("1. First Partner") and labels[1] == "2. unknown"
    _assert_boxes_match(page, faces)
    assert page.inner_text("#roster-summary") == "1 of 1 person present."
    shot(page, "couple-desktop")


def open_chooser_with_enter(page, attempts: int = 3):
    """The file chooser opened by pressing Enter on the focused file input."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(attempts):
        try:
            with page.expect_file_chooser(timeout=8000) as chooser:
                page.keyboard.press("Enter")
            return chooser.value
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# -- the camera checkpoint: Chromium's fake camera plays a video made here from a real photo ---------

CAMERA_SIZE = (640, 480)
CAMERA_FPS = 5
FACE_SECONDS, EMPTY_SECONDS = 5, 6  # somebody in view, then nobody: two appearances in 11 s


def rgb_to_i420(rgb: np.ndarray) -> bytes:
    """One 4:2:0 frame in BT.601 limited range, as Chromium's y4m reader decodes it."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape

    def half(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in (y, half(cb), half(cr)))


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """An uncompressed YUV4MPEG2 video: what --use-file-for-fake-video-capture plays (in a loop)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + rgb_to_i420(frame))
    return path


def camera_scene(photo: Path) -> np.ndarray:
    """The photo fitted into a camera-sized picture on a grey wall."""
    img = Image.open(photo).convert("RGB")
    img.thumbnail(CAMERA_SIZE)
    scene = Image.new("RGB", CAMERA_SIZE, (128, 128, 128))
    scene.paste(img, ((CAMERA_SIZE[0] - img.width) // 2, (CAMERA_SIZE[1] - img.height) // 2))
    return np.asarray(scene)


@pytest.fixture(scope="module")
def camera_browser(playwright, tmp_path_factory):
    """Chromium with a fake camera: with FACE_DATA it plays a person stepping in front of it and
    away again, in a loop; without, Chromium's own test pattern (enough for the permission test)."""
    args = CHROMIUM_ARGS + ["--use-fake-device-for-media-stream"]
    if face_data() is not None:
        scene = camera_scene(face_data() / "facenet_samples" / "test_images" / "angelina_jolie" / "1.jpg")
        empty = np.full_like(scene, 128)
        frames = [scene] * (FACE_SECONDS * CAMERA_FPS) + [empty] * (EMPTY_SECONDS * CAMERA_FPS)
        video = write_y4m(tmp_path_factory.mktemp("camera") / "checkpoint.y4m", frames, CAMERA_FPS)
        args.append(f"--use-file-for-fake-video-capture={video}")
    chromium = playwright.chromium.launch(executable_path=chromium_binary(), args=args)
    yield chromium
    chromium.close()


GRAB_FRAME = """() => {
    const video = document.getElementById('camera-video');
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext('2d').drawImage(video, 0, 0);
    return canvas.toDataURL('image/jpeg', 0.9);
}"""

# Every /v1/identify fetch the page made, as [start, end] in ms (the browser's Resource Timing).
IDENTIFY_TIMES = """since => performance.getEntriesByType('resource')
    .filter(e => e.name.endsWith('/v1/identify') && e.startTime >= since)
    .map(e => [e.startTime, e.responseEnd])"""

# Counts, from now on, the announcements and the frames answered with a recognised face.
WATCH_CAMERA = """() => {
    window.watch = {announcements: [], recognisedFrames: 0, frames: 0};
    new MutationObserver(() => watch.announcements.push(document.getElementById('camera-announce').textContent))
        .observe(document.getElementById('camera-announce'), {childList: true});
    new MutationObserver(() => {
        watch.frames += 1;
        if (document.querySelector('#camera-boxes .face-box.known')) watch.recognisedFrames += 1;
    }).observe(document.getElementById('camera-boxes'), {childList: true});
}"""


def _identify_times(page, since: float = 0.0, wait_for: int = 0) -> list[list[float]]:
    """The page's identify requests since `since` (after `wait_for` of them were answered), checked
    to never overlap: the next one starts only after the previous one's answer has arrived."""
    if wait_for:
        page.wait_for_function(f"since => ({IDENTIFY_TIMES})(since).filter(t => t[1] > 0).length >= {wait_for}",
                               arg=since, timeout=60_000)
    times = sorted(page.evaluate(IDENTIFY_TIMES, since))
    for (start, end), (next_start, _) in zip(times, times[1:]):
        assert next_start >= end, f"two frames in flight at once: {times}"
    return times


@requires_browser
@requires_face_data
def test_camera_checkpoint(live, camera_browser):
    from base64 import b64decode

    pages = _page(camera_browser, permissions=["camera"])
    page = next(pages)
    page.goto(live.url + "/#camera")
    assert page.get_attribute("#tab-camera", "aria-selected") == "true"
    page.wait_for_selector("#key-state:has-text('Open server')")
    assert page.inner_text("#visits-summary") == "Nobody seen yet." and page.is_disabled("#visits-csv")
    page.click("#camera-start")
    page.wait_for_selector("#camera-status:has-text('Camera on')")

    # Nobody is enrolled: the face in view gets a box labelled "unknown", over the face.
    page.wait_for_selector("#camera-boxes .face-box.unknown", timeout=30_000)
    assert page.locator("#camera-boxes .face-label").all_inner_texts() == ["1. unknown"]
    video = page.eval_on_selector("#camera-video", "v => { const r = v.getBoundingClientRect(); "
                                  "return [r.left, r.top, r.width, r.height, v.videoWidth, v.videoHeight]; }")
    assert video[4:] == list(CAMERA_SIZE)
    box = page.eval_on_selector("#camera-boxes .face-box", "b => { const r = b.getBoundingClientRect(); "
                                "return [r.left, r.top, r.width, r.height]; }")
    scene_left = video[0] + video[2] * (1 - 390 / 640) / 2  # the 390 x 480 photo, centred
    assert scene_left < box[0] and box[0] + box[2] < video[0] + video[2] - (scene_left - video[0])
    assert video[1] < box[1] and box[3] > 0.1 * video[3]

    # About one frame a second, each sent only after the previous one was answered.
    times = _identify_times(page, wait_for=5)
    gaps = [b[0] - a[0] for a, b in zip(times, times[1:])]
    assert all(gap >= 900 for gap in gaps), gaps  # never faster than one a second
    # ... and no slower than the server makes it (on a busy machine an answer can take longer).
    durations = [end - start for start, end in times[:-1]]
    assert np.mean(gaps) <= max(1000, np.mean(durations)) + 500, (gaps, durations)

    # Enroll the person from a frame the page itself shows, then watch two appearances: each
    # is announced and logged once, however many frames recognise the person.
    for _ in range(40):
        frame = b64decode(page.evaluate(GRAB_FRAME).split(",", 1)[1])
        faces = live.api("POST", "/v1/identify", files={"image": ("frame.jpg", frame)}).json()["faces"]
        if len(faces) == 1:
            break
        page.wait_for_timeout(250)
    assert len(faces) == 1, "no frame with the face in it"
    page.evaluate(WATCH_CAMERA)
    person = live.enroll("Camera Person", frame)
    page.wait_for_function("() => { const visits = document.querySelectorAll('#visits tbody tr').length;"
                           " return visits >= 2 && watch.recognisedFrames >= visits + 2; }", timeout=90_000)
    page.wait_for_selector("#camera-boxes .face-box.known", timeout=30_000)
    assert re.fullmatch(r"1\. Camera Person \d\.\d{3,6}", page.locator("#camera-boxes .face-label").inner_text())
    shot(page, "camera-desktop")
    shot(page, "camera-phone", PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.set_viewport_size(DESKTOP)

    # A slow server (2.5 s an answer) still gets one frame at a time, never a queue of them.
    live.identify_delay = 2.5
    since = page.evaluate("performance.now()") + 1500  # (after the frame in flight now)
    times = _identify_times(page, since, wait_for=3)
    assert all(end - start >= 2400 for start, end in times if end), times
    assert all(b[0] - a[0] >= 2400 for a, b in zip(times, times[1:])), times

    # Stopping releases the camera and sends nothing more.
    live.identify_delay = 0.0
    page.click("#camera-stop")
    page.wait_for_selector("#camera-status:has-text('Camera off.')")
    assert page.evaluate("document.getElementById('camera-video').srcObject") is None
    stopped = page.evaluate("performance.now()")  # (a frame already in flight is still answered)
    page.wait_for_timeout(2500)
    assert page.evaluate(IDENTIFY_TIMES, stopped) == []

    # One visit logged and announced per appearance, though more frames recognised the person.
    watch = page.evaluate("window.watch")
    visits = page.locator("#visits tbody th").all_inner_texts()
    assert len(visits) >= 2 and visits == ["Camera Person"] * len(visits)
    assert len(watch["announcements"]) == len(visits) < watch["recognisedFrames"], watch
    assert all(a.startswith("Recognised: Camera Person (score ") for a in watch["announcements"]), watch
    assert page.inner_text("#visits-summary") == f"{len(visits)} visits by 1 person."
    threshold = live.app.extensions["facerec"].recognizer.threshold
    with page.expect_download() as download_info:
        page.click("#visits-csv")
    download = download_info.value
    assert re.fullmatch(r"visits-\d{4}-\d\d-\d\d-\d{4}\.csv", download.suggested_filename)
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_bytes().decode("utf-8-sig"))))
    assert rows[0] == ["name", "person_id", "seen_at", "score"]
    assert [r[:2] for r in rows[1:]] == [["Camera Person", person]] * len(visits)
    assert all(float(r[3]) >= threshold for r in rows[1:]), rows
    seen = [np.datetime64(r[2].rstrip("Z")) for r in rows[1:]]
    gaps = [(b - a) / np.timedelta64(1, "s") for a, b in zip(seen, seen[1:])]
    assert all(gap >= EMPTY_SECONDS for gap in gaps), rows  # gone in between: oldest first, one per visit
    next(pages, None)


@requires_browser
def test_camera_refused_or_missing(camera_browser, browser, open_server):
    """The page says plainly when the camera permission is refused and when there is no camera."""
    refused = _page(camera_browser)  # a fake camera exists, but the permission is not granted
    page = next(refused)
    page.goto(open_server.url + "/#camera")
    page.click("#camera-start")
    page.wait_for_selector("#camera-error:visible")
    assert page.inner_text("#camera-error").startswith("The camera permission was refused")
    assert page.inner_text("#camera-status") == "Camera off."
    assert page.is_enabled("#camera-start") and page.is_disabled("#camera-stop")
    assert page.is_hidden("#camera-stage") and page.evaluate(IDENTIFY_TIMES, 0) == []
    shot(page, "camera-refused")
    next(refused, None)

    missing = _page(browser, permissions=["camera"])  # allowed, but this browser has no camera
    page = next(missing)
    page.goto(open_server.url + "/#camera")
    cameras = page.evaluate("navigator.mediaDevices.enumerateDevices()"
                            ".then(ds => ds.filter(d => d.kind === 'videoinput').length)")
    if cameras:
        next(missing, None)
        pytest.skip("this machine has a camera: the no-camera message cannot be shown")
    page.click("#camera-start")
    page.wait_for_selector("#camera-error:visible")
    assert page.inner_text("#camera-error") == \
        "No camera was found on this computer. Connect a camera, then press Start camera."
    next(missing, None)
