"""Redis restart with AOF (deploy/redis.conf): nothing enrolled is lost."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RedisServer
from service_support import altered, b64, encode, gallery_snapshot, head_crop, run_worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def face_jpeg(astronaut) -> bytes:
    return encode(head_crop(astronaut), quality=95)


def test_redis_restart_loses_nothing(service_app_factory, tmp_path, face_jpeg, astronaut):
    # The shipped config, with fsync on every write so that the SIGKILL below cannot race
    # the once-a-second fsync of the production setting.
    server = RedisServer(tmp_path / "aof", config_file=ROOT / "deploy" / "redis.conf",
                         args=("--appendfsync", "always")).start()
    try:
        assert server.client().config_get("appendonly")["appendonly"] in ("yes", b"yes")
        app = service_app_factory(url=server.url)
        client = app.test_client()
        enrolled = client.post("/v1/enroll", json={"people": [
            {"name": "Durable", "metadata": {"badge": 7}, "images": [b64(face_jpeg)]}]}).json
        pid = enrolled["people"][0]["person_id"]
        assert run_worker(server.client())
        before = {k: v for k, v in gallery_snapshot(server.client()).items() if k.startswith(b"fr:")}
        assert before

        server.kill()  # a crash: no shutdown, no final save
        down = client.post("/v1/identify", json={"image": b64(face_jpeg)})
        assert down.status_code == 503 and down.json["error"] == "unavailable"
        server.start()  # same port, same directory: the AOF is replayed

        after = {k: v for k, v in gallery_snapshot(server.client()).items() if k.startswith(b"fr:")}
        assert after == before
        person = client.get(f"/v1/people/{pid}").json
        assert person["image_count"] == 1 and person["metadata"] == {"badge": 7}
        assert client.get(f"/v1/jobs/{enrolled['job_id']}").json["summary"] == {"enrolled": 1}
        copy = b64(altered(head_crop(astronaut)))
        assert client.post("/v1/identify", json={"image": copy}).json["faces"][0]["person"]["person_id"] == pid
        # A process started after the restart builds its cache from the replayed data.
        fresh = service_app_factory(url=server.url)
        assert len(fresh.extensions["facerec"].cache) == 1
    finally:
        server.kill()
