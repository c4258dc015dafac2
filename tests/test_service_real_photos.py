"""Real photographs from $FACE_DATA (skipped without it): several faces, each identified."""
from __future__ import annotations

import io

import numpy as np
from conftest import face_data, requires_face_data
from PIL import Image
from service_support import b64, encode


@requires_face_data
def test_couple_both_faces_identified(service_app_factory):
    client = service_app_factory().test_client()
    photo = (face_data() / "photos" / "couple.jpg").read_bytes()
    first = client.post("/v1/identify", json={"image": b64(photo)}).json
    assert len(first["faces"]) == 2
    assert all(f["decision"] == "unknown" for f in first["faces"])  # nobody enrolled yet

    # Enroll each of the two from a crop around their own face, then identify the photo.
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    people = []
    for n, face in enumerate(first["faces"]):
        x0, y0, x1, y1 = face["box"]
        m = 0.6 * (x1 - x0)
        crop = pixels[max(0, int(y0 - m)):int(y1 + m), max(0, int(x0 - m)):int(x1 + m)]
        pid = client.post("/v1/people", json={"name": f"partner {n}"}).json["person_id"]
        enrolled = client.post(f"/v1/people/{pid}/images", json={"image": b64(encode(crop, quality=92))})
        assert enrolled.status_code == 201, enrolled.json
        people.append(pid)
    second = client.post("/v1/identify", json={"image": b64(photo), "k": 2}).json
    assert len(second["faces"]) == 2
    assert [f["matches"][0]["person_id"] for f in second["faces"]] == people
    assert all(f["decision"] == "match" for f in second["faces"])


@requires_face_data
def test_group_selfie_finds_many_faces(service_app_factory):
    client = service_app_factory().test_client()
    photo = (face_data() / "photos" / "selfie-many-people.jpg").read_bytes()
    faces = client.post("/v1/identify", json={"image": b64(photo)}).json["faces"]
    assert len(faces) >= 3
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
    assert areas == sorted(areas, reverse=True)  # largest face first
