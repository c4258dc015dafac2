"""Recognition core: image decoding, NMS shim, alignment, artifact files, detection, embeddings, CLI."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import face_data, requires_face_data
from PIL import Image

from recognizer._torchvision_shim import batched_nms, nms
from recognizer.artifact import ModelArtifact
from recognizer.errors import BadImageError, ImageTooLargeError, ModelArtifactError
from recognizer.images import decode_bytes, load_image
from recognizer.preprocess import AlignmentRecipe, align_face, crop_aligned_frame, similarity_transform

ROOT = Path(__file__).resolve().parent.parent


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ---- NMS used when torchvision is absent -------------------------------------------------------

def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(int(i))
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (60, 2))
    wh = rng.uniform(5, 40, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.permutation(60).astype(np.float32)  # distinct scores: one right answer
    for thr in (0.3, 0.5, 0.7):
        got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()
        assert got == brute_force_nms(boxes, scores, thr)


def test_batched_nms_keeps_groups_apart():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert sorted(batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist()) == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5).tolist() == [0]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).numel() == 0


# ---- decoding ------------------------------------------------------------------------------------

def test_decoding_handles_modes_and_formats():
    rgb = Image.new("RGB", (40, 30), (200, 10, 10))
    for img, fmt in [(rgb, "JPEG"), (rgb, "PNG"), (rgb.convert("L"), "PNG"), (rgb.convert("RGBA"), "PNG"),
                     (rgb.convert("CMYK"), "JPEG"), (rgb.convert("P"), "PNG")]:
        arr = decode_bytes(encode(img, fmt))
        assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8, (img.mode, fmt)
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_bytes(encode(transparent, "PNG")).min() == 255  # composited on white, not black


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    arr = decode_bytes(encode(img, "JPEG", exif=exif.tobytes()))
    assert arr.shape[:2] == (60, 20)


def test_bad_images_are_refused_with_clear_errors(tmp_path):
    good = encode(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(BadImageError, match="empty"):
        decode_bytes(b"")
    with pytest.raises(BadImageError, match="not a readable image"):
        decode_bytes(b"this is not an image at all")
    with pytest.raises(BadImageError):
        decode_bytes(good[: len(good) // 2])
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_bytes(good, max_bytes=100)
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_bytes(encode(Image.new("RGB", (300, 300))), max_pixels=10_000)
    with pytest.raises(BadImageError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    assert load_image(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)


# ---- alignment -----------------------------------------------------------------------------------

def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_aligning_a_frame_image_at_the_template_equals_the_fixed_crop():
    recipe = AlignmentRecipe()
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)
    aligned = align_face(frame, np.array(recipe.template), recipe)
    np.testing.assert_array_equal(aligned, crop_aligned_frame(frame, recipe))
    assert aligned.shape == (100, 83, 3)


# ---- model artifact ------------------------------------------------------------------------------

def test_artifact_round_trip_and_refusals(tiny_model, tmp_path):
    artifact = ModelArtifact.load(tiny_model)
    assert len(artifact.version) == 16 and -1 <= artifact.threshold <= 1
    assert artifact.recipe.input_size == (96, 80) and artifact.training["config"]["name"] == "tiny"
    with pytest.raises(ModelArtifactError, match="trainer fit"):
        ModelArtifact.load(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(ModelArtifactError, match="corrupt or truncated"):
        ModelArtifact.load(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelArtifactError, match="not a facerec-model"):
        ModelArtifact.load(foreign)
    payload = torch.load(tiny_model, weights_only=True)
    payload["metadata"]["threshold"] = 0.01  # edited behind the hash's back
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(ModelArtifactError, match="damaged"):
        ModelArtifact.load(tampered)


# ---- detection and embeddings --------------------------------------------------------------------

def test_detects_the_astronaut(recognizer, astronaut):
    faces = recognizer.detect(astronaut)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 150 < x0 < 210 and 30 < y0 < 100 and 240 < x1 < 300 and 140 < y1 < 200
    assert faces[0].probability > 0.99
    for x, y in faces[0].landmarks:
        assert x0 <= x <= x1 and y0 <= y <= y1
    assert recognizer.detect(np.full((200, 200, 3), 127, np.uint8)) == []


def test_large_images_are_searched_shrunk_and_answered_in_their_own_pixels(recognizer, astronaut):
    """DETECT_MAX_SIDE: a 4x upscaled astronaut searched at 512 px gives the original's face,
    4x larger, in the large image's coordinates; a small image is not touched."""
    import cv2

    from recognizer.detector import FaceDetector

    big = cv2.resize(astronaut, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 2048x2048
    shrinking = FaceDetector(max_side=512)
    [reference] = recognizer.detect(astronaut)
    [found] = shrinking.detect(big)
    assert np.allclose(found.box, np.array(reference.box) * 4, atol=4 * 3)
    assert np.allclose(found.landmarks, np.array(reference.landmarks) * 4, atol=4 * 3)
    assert found.probability > 0.99
    [same] = shrinking.detect(astronaut)  # 512 px already: searched as is
    assert same == reference
    crops = recognizer.align(big, [found])  # aligned from the full-resolution pixels
    assert crops.shape[1:3] == tuple(recognizer.recipe.input_size)


@requires_face_data
def test_detects_every_face_in_real_group_photos(recognizer):
    photos = face_data() / "photos"
    assert len(recognizer.detect(photos / "couple.jpg")) == 2
    # 7 people: the 4 whole faces are found; the 3 cut by the frame's edges are not (MTCNN finds
    # none of them at any stage threshold down to 0.4 either).
    assert len(recognizer.detect(photos / "selfie-many-people.jpg")) >= 4


def test_embeddings_are_unit_norm_batched_and_deterministic(recognizer, astronaut):
    faces = recognizer.detect(astronaut)
    crop = recognizer.align(astronaut, faces)[0]
    rng = np.random.default_rng(0)
    crops = np.stack([crop, crop[:, ::-1], np.clip(crop.astype(int) + rng.integers(-20, 20, crop.shape), 0, 255)
                      .astype(np.uint8)])
    batch = recognizer.embed(crops)
    assert batch.shape == (3, 512) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([recognizer.embed(crops[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)
    np.testing.assert_array_equal(recognizer.embed(crops), batch)
    # flip-averaging makes a face and its mirror image embed identically
    np.testing.assert_allclose(batch[0], batch[1], atol=1e-5)
    assert recognizer.embed(crops[:0]).shape == (0, 512)


def test_analyze_accepts_every_kind_of_source(recognizer, astronaut, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(astronaut).save(path)
    sources = [astronaut, Image.fromarray(astronaut), path, str(path), path.read_bytes()]
    vectors = [recognizer.analyze(s)[0].embedding for s in sources]
    for v in vectors[1:]:
        np.testing.assert_allclose(v, vectors[0], atol=1e-5)


def test_crop_modes_skip_detection(recognizer, synthetic_celeba):
    frame = next((synthetic_celeba / "img_align_celeba").iterdir())
    vecs = recognizer.embed_images([frame, frame], crop_mode="frame")
    assert vecs.shape == (2, 512)
    crop = crop_aligned_frame(load_image(frame), recognizer.recipe)
    np.testing.assert_allclose(recognizer.embed_images([crop], crop_mode="crop")[0], vecs[0], atol=1e-5)


# ---- local CLI -----------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recognizer", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_prints_scores_with_enough_digits():
    from recognizer.cli import score_digits

    assert [score_digits(t) for t in (0.41234, 0.6, 0.9923, 0.99994, 0.9999999, 1.0, 1.01, -0.2)] == \
        [3, 3, 4, 6, 6, 3, 3, 3]
    assert f"{0.99994:.{score_digits(0.99994)}f}" == "0.999940"  # not "1.000"


def test_cli_enrolls_and_identifies(tiny_model, recognizer, astronaut, tmp_path):
    enroll_img = tmp_path / "eileen.jpg"
    Image.fromarray(astronaut).save(enroll_img, quality=95)
    probe = tmp_path / "probe.jpg"
    Image.fromarray(astronaut).resize((384, 384)).save(probe, quality=70)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 120), (90, 90, 90)).save(blank)
    gallery = tmp_path / "gallery"
    out = run_cli("enroll", "--model", str(tiny_model), "--gallery", str(gallery), "Eileen Collins",
                  str(enroll_img), str(blank))
    assert out.returncode == 0, out.stderr
    assert "enrolled" in out.stdout and "no_face" in out.stdout and "1 in all" in out.stdout
    out = run_cli("identify", "--model", str(tiny_model), "--gallery", str(gallery), str(probe))
    assert out.returncode == 0, out.stderr
    assert "1 face(s)" in out.stdout and ": Eileen Collins" in out.stdout
    # The tiny model's threshold is close to 1: printed so that it does not read as 1.000.
    printed = float(re.search(r"\(threshold ([0-9.]+),", out.stdout).group(1))
    assert abs((1 - printed) - (1 - recognizer.threshold)) <= 0.05 * (1 - recognizer.threshold), out.stdout
    out = run_cli("identify", "--model", str(tiny_model), "--gallery", str(gallery), "--threshold", "1.01",
                  str(probe))
    assert ": unknown" in out.stdout
    out = run_cli("identify", "--model", str(tiny_model), "--gallery", str(tmp_path / "nope"), str(probe))
    assert out.returncode == 2 and "error:" in out.stderr


def test_enrollment_policy_refuses_two_faces_of_similar_size(recognizer, astronaut):
    from recognizer.enrollment import ENROLLED, NO_FACE, SEVERAL_FACES, TOO_SMALL, embed_for_enrollment

    head = astronaut[20:240, 120:330]
    pair = np.concatenate([head, head[:, ::-1]], axis=1)
    result = embed_for_enrollment(recognizer, encode(Image.fromarray(pair)))
    assert result.status == SEVERAL_FACES and result.faces_found == 2 and result.embedding is None
    assert "similar size" in result.message
    small = np.asarray(Image.fromarray(head).resize((105, 110)))
    dominant = np.concatenate([head, np.pad(small, ((0, 110), (0, 0), (0, 0)))], axis=1)
    result = embed_for_enrollment(recognizer, encode(Image.fromarray(dominant)))
    assert result.status == ENROLLED and result.faces_found == 2 and "largest" in result.message
    assert result.embedding.shape == (512,)
    tiny = np.pad(np.asarray(Image.fromarray(head).resize((70, 74))), ((40, 40), (40, 40), (0, 0)))
    assert embed_for_enrollment(recognizer, encode(Image.fromarray(tiny))).status == TOO_SMALL
    assert embed_for_enrollment(recognizer, encode(Image.new("RGB", (90, 90)))).status == NO_FACE


def test_high_bit_depth_images_decode_like_their_8_bit_originals(recognizer, astronaut):
    """16-bit grayscale (PNG, TIFF), 32-bit integer and float images of a real face decode to
    the 8-bit picture (not to near-white by clipping), and the face is found in them."""
    import cv2

    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    wide = gray.astype(np.uint16) * 257
    variants = {
        "png gray16": cv2.imencode(".png", wide)[1].tobytes(),
        "tiff gray16": cv2.imencode(".tiff", wide)[1].tobytes(),
        "png rgb16": cv2.imencode(".png", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)[1]
        .tobytes(),
        "tiff float [0,1]": cv2.imencode(".tiff", gray.astype(np.float32) / 255)[1].tobytes(),
        "tiff int32": encode(Image.fromarray(wide.astype(np.int32), mode="I"), "TIFF"),
    }
    for name, data in variants.items():
        decoded = decode_bytes(data)
        reference = astronaut if name == "png rgb16" else np.stack([gray] * 3, axis=-1)
        error = np.abs(decoded.astype(int) - reference.astype(int)).mean()
        assert decoded.dtype == np.uint8 and error < 1.0, (name, Image.open(io.BytesIO(data)).mode, error)
        assert len(recognizer.detector.detect(decoded)) >= 1, name
