"""INFERENCE_BACKEND=onnx-int8: the int8 graph rebuilt from the parameters kept beside the model.

The graph a server builds from the file must be the very graph calibration made; a file that
does not fit (another model, another graph) must stop the start with the command that remakes
it; and on real faces the shipped model's int8 embeddings must stay with its fp32 ones.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import face_data, requires_face_data, synthetic_face

from recognizer import Recognizer
from recognizer.errors import ModelArtifactError
from recognizer.int8 import (Int8Quantization, activation_parameters, build_int8_graph, calibrate,
                             find_quantization, kept_in_fp32, library_versions, quantization_path)
from recognizer.onnx_runtime import OnnxStage


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A small convolutional network (the shapes the product's graph has: a first convolution on
    the pixels, more behind it, a dense layer last) as an fp32 ONNX graph, an int8 graph
    calibrated on random batches, and its parameters. Small, so the mechanics cost no time; the
    real network is quantized by the calibrate-int8 and shipped-model tests below."""
    import torch
    from torch import nn

    from recognizer.onnx_runtime import export_onnx

    tmp = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8)).eval()
    fp32 = tmp / "fp32.onnx"
    fp32.write_bytes(export_onnx(net, torch.zeros(2, 3, 24, 20)))
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (4, 3, 24, 20)).astype(np.float32) for _ in range(4)]
    graph = tmp / "calibrated.onnx"
    params = calibrate(fp32, batches, keep=graph)
    return {"fp32": fp32, "graph": graph, "params": params, "batches": batches, "shape": (3, 24, 20)}


def quantization(params: dict, version: str = "0123456789abcdef") -> Int8Quantization:
    return Int8Quantization(version, params, library_versions(), 16, "random batches (test)")


def test_graph_from_kept_parameters_is_the_calibrated_graph(calibrated):
    params = calibrated["params"]
    assert activation_parameters(calibrated["graph"]) == params  # calibrate() returns what its graph holds
    assert len(params) >= 4 and "x" not in params  # the activations, not the pixels: the first conv is kept
    # byte for byte: so every activation's parameters came from the file, none from the blank
    # input the rebuild hands the quantizer
    rebuilt = build_int8_graph(calibrated["fp32"], quantization(params), calibrated["shape"])
    assert rebuilt == calibrated["graph"].read_bytes()


def test_first_convolution_and_dense_layer_stay_fp32(calibrated):
    import onnx

    kept = kept_in_fp32(calibrated["fp32"])
    assert len(kept) == 2
    graph = onnx.load(str(calibrated["graph"])).graph
    made_by = {out: n for n in graph.node for out in n.output}
    constants = {i.name for i in graph.initializer}
    first = next(n for n in graph.node if n.name == kept[0])
    assert first.input[0] == graph.input[0].name  # the pixels, not a dequantized copy of them
    assert first.input[1] in constants  # and its fp32 weights
    dense = next(n for n in graph.node if n.op_type in ("Gemm", "MatMul"))
    assert dense.name == kept[1] and dense.input[1] in constants  # an fp32 weight, not a DequantizeLinear's output
    quantized = [n for n in graph.node if n.op_type == "Conv" and n.input[0] in made_by
                 and made_by[n.input[0]].op_type == "DequantizeLinear"]
    assert len(quantized) == 2  # the other convolutions read int8 activations
    # and the int8 graph computes what the fp32 one does, roughly
    import onnxruntime as ort

    x = calibrated["batches"][0]
    a = ort.InferenceSession(str(calibrated["fp32"]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(calibrated["graph"]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_parameters_that_do_not_fit_are_refused(calibrated):
    """One activation of the graph missing from the file, one of the file's not in the graph (as
    when another torch names the tensors otherwise)."""
    params = dict(calibrated["params"])
    name = sorted(params)[len(params) // 2]
    del params[name]
    params["/another/torch/Relu_output_0"] = (0.1, 0)
    with pytest.raises(ModelArtifactError, match="do not fit this graph: 1 of its activations have none .*"
                                                 "1 of the file's are not in it.*calibrate-int8"):
        build_int8_graph(calibrated["fp32"], quantization(params), calibrated["shape"])


def test_file_round_trip_and_bad_files(calibrated, tmp_path):
    params = calibrated["params"]
    q = quantization(params)
    path = tmp_path / "m.int8.json"
    q.save(path)
    again = Int8Quantization.load(path)
    assert again == q and again.fingerprint() == q.fingerprint()
    assert quantization({**params, "x": (0.5, 3)}).fingerprint() != q.fingerprint()
    body = path.read_text()
    path.write_text(body.replace('"format": "face-int8-quantization"', '"format": "face-stranger-curve"'))
    with pytest.raises(ModelArtifactError, match="not a int8 quantization file"):
        Int8Quantization.load(path)
    path.write_text(body.replace('"images": 16', '"images": "many"'))
    with pytest.raises(ModelArtifactError, match="missing or bad field"):
        Int8Quantization.load(path)
    with pytest.raises(ValueError, match="not a uint8 quantization"):
        quantization({"a": (0.0, 0)})
    with pytest.raises(ValueError, match="not a uint8 quantization"):
        quantization({"a": (0.1, 300)})


def test_calibrate_int8_then_serve_it(tiny_model, synthetic_celeba, tmp_path, monkeypatch):
    """``trainer calibrate-int8`` on the tiny model and its synthetic split writes the file beside
    the model, with its checks, and a recognizer serves it; without a file, or with another
    model's, the int8 backend refuses to start (the bars are loose for an 8-person model; they
    are checked below, and the release test sees the file written or skipped)."""
    from trainer.int8_calibration import calibrate_model

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.pt"
    shutil.copy(tiny_model, model)
    with pytest.raises(ModelArtifactError, match="int8 parameters.*calibrate-int8"):
        Recognizer(model, backend="onnx-int8")
    kept, report = calibrate_model(model, synthetic_celeba, None, images=16, min_cosine=0.9, max_tar_drop=1.0)
    assert Int8Quantization.load(quantization_path(model)) == kept
    assert kept.images == 16 and kept.checks["min_cosine"] == report["min_cosine"] >= 0.9
    assert set(report["int8"]) == set(report["fp32"]) == {"tar@far=0.01", "tar@far=0.001", "top1"}
    assert report["held_out_images"] > 0
    fp32 = Recognizer(model)
    int8 = Recognizer(model, backend="onnx-int8")
    assert isinstance(int8.detector._rnet, OnnxStage)  # noqa: SLF001 - MTCNN stays fp32 under ONNX Runtime
    crops = np.stack([fp32.prepare(np.asarray(synthetic_face(i, v)), "frame") for i in range(4) for v in range(3)])
    served = int8.embed(crops)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert np.sum(served * fp32.embed(crops), axis=1).min() > 0.9
    # the int8 graph is cached beside the fp32 one and reused by the next process
    cached = list((tmp_path / "cache").glob(f"embedder-{fp32.version}-int8-*.onnx"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    np.testing.assert_allclose(Recognizer(model, backend="onnx-int8").embed(crops), served, atol=1e-6)
    assert cached[0].stat().st_mtime_ns == stamp
    # another model's file is not used, and then there is none
    Int8Quantization("0123456789abcdef", kept.activations, kept.versions, 16, "x").save(quantization_path(model))
    assert find_quantization(model, fp32.version) is None
    with pytest.raises(ModelArtifactError, match="none for"):
        Recognizer(model, backend="onnx-int8")


def test_the_bars_name_what_int8_misses():
    from trainer.int8_calibration import failed_bars

    report = {"min_cosine": 0.9990, "fp32": {"tar@far=0.001": 0.750}, "int8": {"tar@far=0.001": 0.748}}
    assert failed_bars(report) == ""
    assert failed_bars({**report, "min_cosine": 0.9940}) == "min cosine 0.9940 to fp32 (bar 0.995)"
    worse = {**report, "int8": {"tar@far=0.001": 0.740}}
    assert failed_bars(worse) == "open TAR at FAR 1e-3 0.0100 below fp32's (bar 0.005)"
    assert " and " in failed_bars({**worse, "min_cosine": 0.99})


def test_service_config_takes_onnx_int8():
    from service.config import ConfigError, load_config

    assert load_config({"INFERENCE_BACKEND": "onnx-int8"}, environ={}).inference_backend == "onnx-int8"
    with pytest.raises(ConfigError, match="onnx-int8"):
        load_config({"INFERENCE_BACKEND": "int4"}, environ={})


@pytest.fixture(scope="module")
def shipped_cache(tmp_path_factory) -> Path:
    """One graph cache for the shipped model's tests: its int8 graph is built once."""
    return tmp_path_factory.mktemp("shipped-int8-cache")


@requires_face_data
def test_shipped_int8_keeps_real_faces(shipped, shipped_cache, monkeypatch):
    """The committed parameters belong to the shipped model, and on 120 celeba_ir faces (people
    never trained on) int8 stays with fp32: every cosine >= 0.995 (measured: 0.9985), no pair's
    score moved by 0.03 (measured: 0.022 at most), and the same decisions at the model's threshold
    for at least 99.9% of the 7,140 pairs (measured: all)."""
    from recognizer.artifact import SHIPPED_MODEL
    from recognizer.images import load_image
    from recognizer.preprocess import resize_to_input

    monkeypatch.setenv("FACEREC_CACHE", str(shipped_cache))
    kept = find_quantization(SHIPPED_MODEL, shipped.version)
    assert kept is not None, "models/facerec.int8.json is missing or not the shipped model's: run trainer calibrate-int8"
    int8 = Recognizer(backend="onnx-int8")
    paths = sorted((face_data() / "celeba_ir" / "celebA_query").iterdir())[:120]
    crops = np.stack([resize_to_input(load_image(p), shipped.recipe) for p in paths])
    a, b = shipped.embed(crops), int8.embed(crops)
    assert np.sum(a * b, axis=1).min() >= 0.995
    scores_a, scores_b = a @ a.T, b @ b.T
    assert np.abs(scores_a - scores_b).max() < 0.03
    upper = np.triu_indices(len(a), k=1)
    differ = (scores_a[upper] >= shipped.threshold) != (scores_b[upper] >= shipped.threshold)
    assert differ.mean() <= 0.001


@requires_face_data
def test_service_on_int8_identifies_both_partners(redis_server, redis_db, shipped_cache, monkeypatch):
    """A server started with INFERENCE_BACKEND=onnx-int8 builds its own recognizer from the
    setting and the file beside the shipped model, and tells the two people of a photo apart."""
    from PIL import Image
    from service_support import b64, encode

    from recognizer.artifact import SHIPPED_MODEL
    from service.app import create_app

    monkeypatch.setenv("FACEREC_CACHE", str(shipped_cache))
    app = create_app({"REDIS_URL": redis_server.url, "MODEL_PATH": str(SHIPPED_MODEL), "TESTING": True,
                      "RATE_LIMIT": "off", "INFERENCE_BACKEND": "onnx-int8"})
    client = app.test_client()
    assert client.get("/health").json["inference_backend"] == "onnx-int8"  # what an operator checks
    photo = (face_data() / "photos" / "couple.jpg").read_bytes()
    faces = client.post("/v1/identify", json={"image": b64(photo)}).json["faces"]
    assert len(faces) == 2
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    people = []
    for n, face in enumerate(faces):
        x0, y0, x1, y1 = face["box"]
        m = 0.6 * (x1 - x0)
        crop = pixels[max(0, int(y0 - m)):int(y1 + m), max(0, int(x0 - m)):int(x1 + m)]
        pid = client.post("/v1/people", json={"name": f"partner {n}"}).json["person_id"]
        assert client.post(f"/v1/people/{pid}/images", json={"image": b64(encode(crop, quality=92))}).status_code == 201
        people.append(pid)
    again = client.post("/v1/identify", json={"image": b64(photo), "k": 2}).json["faces"]
    assert [f["matches"][0]["person_id"] for f in again] == people
    assert all(f["decision"] == "match" for f in again)
