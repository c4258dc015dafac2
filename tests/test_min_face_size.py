"""Per-call and per-request ``min_face_size``: the same faces, less detector work, 4xx on bad values."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import face_data, requires_face_data
from service_support import b64, encode, gallery_snapshot

from recognizer.detector import check_min_face_size
from recognizer.errors import InvalidRequestError


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detector_min_face_size_finds_the_same_large_face(recognizer, astronaut):
    detector = recognizer.detector
    default = detector.detect(astronaut)
    assert len(default) == 1 and default[0].size > 80
    larger = detector.detect(astronaut, min_face_size=60)
    assert len(larger) == 1
    assert iou(default[0].box, larger[0].box) >= 0.99  # same pyramid scales for this face: same box
    # A minimum larger than the image finds nothing (and does no work).
    assert detector.detect(astronaut, min_face_size=513) == []
    # A request cannot lower the detector's own minimum (the deployment's cost bound).
    assert [f.box for f in detector.detect(astronaut, min_face_size=12)] == [f.box for f in default]


@pytest.mark.parametrize("bad", [11, 0, -80, 2.5, "80", True, None])
def test_check_min_face_size_rejects(bad):
    with pytest.raises(InvalidRequestError, match="min_face_size"):
        check_min_face_size(bad)


def test_identify_min_face_size_parameter(service_app_factory, redis_db, astronaut):
    client = service_app_factory(MIN_FACE_SIZE=20).test_client()
    photo = b64(encode(astronaut, quality=90))
    default = client.post("/v1/identify", json={"image": photo})
    assert default.status_code == 200 and default.json["min_face_size"] == 20
    checkpoint = client.post("/v1/identify", json={"image": photo, "min_face_size": 80})
    assert checkpoint.status_code == 200, checkpoint.json
    assert checkpoint.json["min_face_size"] == 80
    assert len(checkpoint.json["faces"]) == len(default.json["faces"]) == 1
    assert iou(checkpoint.json["faces"][0]["box"], default.json["faces"][0]["box"]) >= 0.9
    form = client.post("/v1/identify?min_face_size=100", json={"image": photo})
    assert form.status_code == 200 and form.json["min_face_size"] == 100

    before = gallery_snapshot(redis_db)
    for bad in [19, 0, -1, 4097, 2.5, "big", True]:
        resp = client.post("/v1/identify", json={"image": photo, "min_face_size": bad})
        assert resp.status_code == 400, (bad, resp.json)
        assert resp.json["error"] == "invalid_request"
        assert "min_face_size" in resp.json["message"]
    assert gallery_snapshot(redis_db) == before


@requires_face_data
def test_real_photos_same_faces_at_min_face_size_80(recognizer):
    """The shared photos' faces are all 80 px and more: a checkpoint setting finds each of them."""
    from recognizer.images import load_image

    for name in ("couple.jpg", "selfie-many-people.jpg"):
        pixels = load_image((face_data() / "photos" / name).read_bytes())
        default = recognizer.detector.detect(pixels)
        fast = recognizer.detector.detect(pixels, min_face_size=80)
        assert len(default) >= 2 and len(fast) == len(default), name
        for face in default:
            assert max(iou(face.box, other.box) for other in fast) >= 0.9, (name, face.box)
        assert np.all([f.size >= 80 for f in default])
