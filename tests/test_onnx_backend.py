"""INFERENCE_BACKEND=onnx: the same embeddings and face boxes as PyTorch, graphs cached per model."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_face

from recognizer import Recognizer


def test_onnx_embeddings_equal_torch(tiny_model, astronaut, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    torch_rec = Recognizer(tiny_model)
    onnx_rec = Recognizer(tiny_model, backend="onnx")
    faces = [np.asarray(synthetic_face(i, v)) for i in range(4) for v in range(3)]
    crops = np.stack([torch_rec.prepare(f, "frame") for f in faces]
                     + [torch_rec.align(astronaut, torch_rec.detector.detect(astronaut))[0]])
    a, b = torch_rec.embed(crops), onnx_rec.embed(crops)
    assert a.shape == b.shape == (len(crops), torch_rec.dim)
    cos = np.sum(a * b, axis=1)
    assert cos.min() > 0.99999, cos
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # one face at a time gives the batch's answer
    np.testing.assert_allclose(onnx_rec.embed(crops[:1]), b[:1], atol=1e-5)
    # the exported graph is cached per model version and reused by the next process
    cached = list((tmp_path / "cache").glob(f"embedder-{torch_rec.version}-*.onnx"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = Recognizer(tiny_model, backend="onnx")
    assert cached[0].stat().st_mtime_ns == stamp
    np.testing.assert_allclose(again.embed(crops), b, atol=1e-6)


def test_models_not_yet_saved_get_graphs_of_their_own(tiny_model, tmp_path, monkeypatch):
    """A model built in memory (``trainer average`` measures one before saving it) has no version
    yet; a second such model must not be handed the first one's cached graph."""
    import torch

    from recognizer.artifact import ModelArtifact

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    base = ModelArtifact.load(tiny_model)
    unsaved = [ModelArtifact(state_dict={k: v * scale if k.endswith("conv.weight") else v
                                         for k, v in base.state_dict.items()},
                             recipe=base.recipe, threshold=base.threshold) for scale in (1.0, -1.0)]
    assert all(a.version == "" for a in unsaved)
    crops = np.stack([Recognizer(tiny_model).prepare(np.asarray(synthetic_face(i, 0)), "frame") for i in range(3)])
    for artifact in unsaved:
        np.testing.assert_allclose(Recognizer(artifact, backend="onnx").embed(crops),
                                   Recognizer(artifact).embed(crops), atol=1e-4)
    assert len(list((tmp_path / "cache").glob("embedder-*.onnx"))) == 2
    assert torch.equal(base.state_dict["conv2d_1a.conv.weight"], unsaved[0].state_dict["conv2d_1a.conv.weight"])


def test_onnx_detector_finds_the_same_faces(tiny_model, astronaut, tmp_path, monkeypatch):
    from recognizer.detector import FaceDetector

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    torch_det, onnx_det = FaceDetector(), FaceDetector(backend="onnx")
    assert sorted(p.name.split("-torch")[0] for p in (tmp_path / "cache").iterdir()) == [
        "mtcnn-onet-facenet-pytorch2.6.0", "mtcnn-rnet-facenet-pytorch2.6.0"]
    group = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)  # two faces
    for image, mfs in ((astronaut, None), (group, None), (group, 60)):
        a, b = torch_det.detect(image, mfs), onnx_det.detect(image, mfs)
        assert len(a) == len(b) >= 1
        for fa, fb in zip(a, b):
            np.testing.assert_allclose(fa.box, fb.box, atol=0.05)
            np.testing.assert_allclose(fa.landmarks, fb.landmarks, atol=0.05)
            assert abs(fa.probability - fb.probability) < 1e-4


def test_unknown_backend_is_refused(tiny_model):
    with pytest.raises(ValueError, match="backend"):
        Recognizer(tiny_model, backend="tensorrt")


def test_service_config_checks_inference_backend():
    from service.config import ConfigError, load_config

    assert load_config({"INFERENCE_BACKEND": "onnx"}, environ={}).inference_backend == "onnx"
    with pytest.raises(ConfigError, match="INFERENCE_BACKEND"):
        load_config({"INFERENCE_BACKEND": "fast"}, environ={})
