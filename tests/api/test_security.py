"""API keys, query budgets, rate limits, the access log and the metrics (the state stores themselves: tests/state)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.security import KeyRing
from tests.api.conftest import AppClient, make_settings, random_images, running_app

ALICE, BARE, CAROL, METRICS = "alice-secret-1", "bare-secret-2", "carol-secret-3", "metrics-secret-4"
BARE_ID = "key-2"  # its position among the entries: nothing derived from the secret
OPEN_ROUTES = ["/healthz", "/readyz", "/v2", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json"]
MODEL_ROUTES = [("GET", "/v1/model"), ("POST", "/v1/predict"), ("GET", "/v2/models/teacher"), ("GET", "/v2/models/teacher/ready"),
                ("POST", "/v2/models/teacher/infer")]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def pixels(count: int, seed: int = 0) -> dict:
    return {"pixels": random_images(count, seed).tolist()}


@pytest.fixture(scope="module")
def keyed_app(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppClient]:
    folder = tmp_path_factory.mktemp("keyed")
    keys_file = folder / "keys.txt"
    keys_file.write_text(f"# model owner's keys\n\ncarol:{CAROL}\n")
    settings = make_settings(tiny_teacher, folder, api_keys=[f"alice:{ALICE}", BARE], api_keys_file=keys_file,
                             access_log=str(folder / "access.jsonl"), metrics_key=METRICS)
    with running_app(settings) as client:
        yield client


# ---- keys ----------------------------------------------------------------------------------------------

def test_health_routes_are_open_and_model_routes_need_a_key(keyed_app: AppClient) -> None:
    for path in OPEN_ROUTES:
        assert keyed_app.get(path).status_code == 200, path
    for method, path in MODEL_ROUTES:
        for headers, message in (({}, "missing API key"), (bearer("wrong"), "invalid API key"),
                                 ({"X-API-Key": "wrong"}, "invalid API key"), ({"Authorization": f"Basic {ALICE}"}, "missing API key")):
            response = keyed_app.request(method, path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json() == {"error": response.json()["error"], "code": "unauthorized"}
            assert message in response.json()["error"] and response.headers["www-authenticate"] == "Bearer"


def test_keys_work_as_bearer_or_x_api_key_from_settings_and_file(keyed_app: AppClient) -> None:
    for headers in (bearer(ALICE), {"X-API-Key": BARE}, {"authorization": f"bearer {CAROL}"}):
        assert keyed_app.get("/v1/model", headers=headers).status_code == 200, headers
        assert keyed_app.post("/v1/predict", json=pixels(1), headers=headers).status_code == 200, headers


def test_only_digests_of_keys_are_kept(keyed_app: AppClient) -> None:
    service = keyed_app.service
    assert service.settings.api_keys == []
    kept = repr(vars(service.keys)) + repr(service.settings)
    for secret in (ALICE, BARE, CAROL):
        assert secret not in kept and hashlib.sha256(secret.encode()).hexdigest() in kept
    assert service.keys.key_ids == sorted(["alice", BARE_ID, "carol"])
    assert METRICS not in kept and service.settings.metrics_key is None


def test_metrics_take_only_the_metrics_key_and_publish_nothing_derived_from_a_secret(keyed_app: AppClient) -> None:
    for headers in ({}, bearer(ALICE), {"X-API-Key": CAROL}, bearer("guess")):
        refused = keyed_app.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized", headers
    keyed_app.post("/v1/predict", json=pixels(1), headers={"X-API-Key": BARE})
    exposition = keyed_app.get("/metrics", headers=bearer(METRICS)).text
    assert 'stingy_images_served_total{key="key-2"}' in exposition
    for secret in (ALICE, BARE, CAROL, METRICS):
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert not any(digest[:length] in exposition for length in (6, 8, 16)), "a fingerprint of a secret is published"


def test_metrics_are_off_on_a_keyed_server_without_a_metrics_key(tiny_teacher: Path, tmp_path: Path) -> None:
    with running_app(make_settings(tiny_teacher, tmp_path, api_keys=[f"alice:{ALICE}"])) as client:
        for headers in ({}, bearer(ALICE)):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 403 and "STINGY_METRICS_KEY" in response.json()["error"]
    with pytest.raises(ValueError, match="must differ from every API key"):
        running_app(make_settings(tiny_teacher, tmp_path, api_keys=[f"alice:{ALICE}"], metrics_key=ALICE)).__enter__()


def test_with_a_budget_every_key_needs_a_name(tiny_teacher: Path, tmp_path: Path) -> None:
    """A bare secret's id is its position: reordering the keys would hand one key's count to another."""
    with pytest.raises(ValueError, match="entry 2 has no name") as error:
        running_app(make_settings(tiny_teacher, tmp_path, api_keys=[f"alice:{ALICE}", BARE], budget_images=5)).__enter__()
    assert BARE not in str(error.value)


def test_key_ring_rejects_empty_and_repeated_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty secret"):
        KeyRing(["alice:"])
    with pytest.raises(ValueError, match="repeats"):
        KeyRing(["alice:one", "alice:two"])
    with pytest.raises(ValueError, match="repeats") as error:
        KeyRing(["one:same-secret", "two:same-secret"])
    assert "same-secret" not in str(error.value)
    assert KeyRing([]).authenticate({}) == "anonymous"


# ---- budgets -------------------------------------------------------------------------------------------

def test_budget_counts_images_and_refuses_whole_requests(tiny_teacher: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_teacher, tmp_path, api_keys=[f"alice:{ALICE}", f"carol:{CAROL}"], budget_images=10, metrics_key=METRICS)
    with running_app(settings) as client:
        assert client.get("/v1/model", headers=bearer(ALICE)).headers["x-budget-remaining"] == "10"
        first = client.post("/v1/predict", json=pixels(4), headers=bearer(ALICE))
        assert first.status_code == 200 and first.headers["x-budget-remaining"] == "6"
        v2 = client.post("/v2/models/teacher/infer", headers=bearer(ALICE), json={"inputs": [
            {"name": "images", "shape": [4, 1, 28, 28], "datatype": "UINT8", "data": random_images(4, 1).reshape(-1).tolist()}]})
        assert v2.status_code == 200 and v2.headers["x-budget-remaining"] == "2"
        refused = client.post("/v1/predict", json=pixels(3), headers=bearer(ALICE))
        assert refused.status_code == 403
        assert refused.json() == {"error": "query budget exhausted: 8 of 10 images used, this request needs 3", "code": "budget_exhausted"}
        assert client.post("/v1/predict", json=pixels(2), headers=bearer(ALICE)).headers["x-budget-remaining"] == "0"
        assert client.post("/v1/predict", json=pixels(1), headers=bearer(ALICE)).status_code == 403
        assert client.post("/v1/predict", json=pixels(10), headers=bearer(CAROL)).headers["x-budget-remaining"] == "0"
        invalid = client.post("/v1/predict", json={"pixels": [[[[999]]]]}, headers=bearer(CAROL))
        assert invalid.status_code == 400  # a malformed request is refused before the budget is looked at
        metrics = _samples(client.get("/metrics", headers=bearer(METRICS)).text)
        assert metrics[("stingy_budget_rejections_total", (("key", "alice"),))] == 2
        assert metrics[("stingy_images_served_total", (("key", "alice"),))] == 10


def test_concurrent_requests_never_overspend_and_a_restart_keeps_the_count(tiny_teacher: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_teacher, tmp_path, api_keys=[f"alice:{ALICE}"], budget_images=10, max_delay_ms=20)

    async def burst(client: httpx.AsyncClient) -> list[httpx.Response]:
        return await asyncio.gather(*(client.post("/v1/predict", json=pixels(3, i), headers=bearer(ALICE)) for i in range(24)))

    with running_app(settings) as client:
        responses = client.run(burst)
        assert sorted(r.status_code for r in responses) == [200] * 3 + [403] * 21
        assert sorted(r.headers["x-budget-remaining"] for r in responses if r.status_code == 200) == ["1", "4", "7"]
        assert client.service.budget.used("alice") == 9
    with running_app(settings) as restarted:
        assert restarted.get("/v1/model", headers=bearer(ALICE)).headers["x-budget-remaining"] == "1"
        assert restarted.post("/v1/predict", json=pixels(2), headers=bearer(ALICE)).status_code == 403
        assert restarted.post("/v1/predict", json=pixels(1), headers=bearer(ALICE)).status_code == 200


def test_a_failed_forward_costs_nothing_and_answers_a_generic_500(tiny_teacher: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tiny_teacher, tmp_path, budget_images=5)
    with running_app(settings, raise_app_exceptions=False) as client:
        def broken(inputs: object) -> None:
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(client.service.runner, "model", broken)
        response = client.post("/v1/predict", json=pixels(2))
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error", "code": "internal"}
        assert client.service.budget.used("anonymous") == 0


# ---- rate limits ---------------------------------------------------------------------------------------

def test_rate_limit_answers_429_with_retry_after_per_key(tiny_teacher: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_teacher, tmp_path, api_keys=[f"alice:{ALICE}", f"carol:{CAROL}"], rate_limit=0.5, rate_burst=2,
                             metrics_key=METRICS)
    with running_app(settings) as client:
        assert [client.get("/v1/model", headers=bearer(ALICE)).status_code for _ in range(2)] == [200, 200]
        limited = client.post("/v1/predict", json=pixels(1), headers=bearer(ALICE))
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
        assert limited.headers["retry-after"] in ("1", "2")
        assert client.get("/v1/model", headers=bearer(CAROL)).status_code == 200  # another key has its own bucket
        assert client.get("/healthz").status_code == 200  # health routes are not limited
        metrics = _samples(client.get("/metrics", headers=bearer(METRICS)).text)
        assert metrics[("stingy_rate_limit_rejections_total", (("key", "alice"),))] == 1


def test_failed_authentications_are_rate_limited_per_client_address(tiny_teacher: Path, tmp_path: Path) -> None:
    """Guessing keys costs time: past the burst, a client that keeps failing gets 429, and a valid key from
    the same address still gets in."""
    settings = make_settings(tiny_teacher, tmp_path, api_keys=[f"alice:{ALICE}"], auth_failure_rate=0.1, auth_failure_burst=3,
                             metrics_key=METRICS)
    with running_app(settings) as client:
        failures = [client.get("/v1/model", headers=headers).status_code for headers in (bearer("guess-1"), {}, bearer("guess-2"))]
        assert failures == [401, 401, 401]
        limited = client.post("/v1/predict", json=pixels(1), headers=bearer("guess-3"))
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
        assert limited.headers["retry-after"] == "10"
        assert client.get("/v1/model", headers=bearer(ALICE)).status_code == 200
        assert client.get("/healthz").status_code == 200
        metrics = _samples(client.get("/metrics", headers=bearer(METRICS)).text)
        assert metrics[("stingy_rate_limit_rejections_total", (("key", "unauthenticated"),))] == 1


# ---- access log and metrics ----------------------------------------------------------------------------

def test_access_log_has_key_images_status_latency_and_nothing_else(keyed_app: AppClient) -> None:
    log = Path(keyed_app.service.settings.access_log)
    start = len(log.read_text().splitlines()) if log.exists() else 0
    answer = keyed_app.post("/v1/predict", json=pixels(3, seed=9), headers={"X-API-Key": BARE})
    keyed_app.post("/v1/predict", json={"pixels": [[[[256]]]]}, headers=bearer(ALICE))
    keyed_app.get("/v1/model", headers=bearer("not-a-key"))
    lines = [json.loads(line) for line in log.read_text().splitlines()[start:]]
    assert [(r["route"], r["status"], r["key"], r["images"]) for r in lines] == [
        ("/v1/predict", 200, BARE_ID, 3), ("/v1/predict", 400, "alice", 0), ("/v1/model", 401, None, 0)]
    assert all(set(r) == {"time", "method", "route", "status", "key", "images", "latency_ms"} and r["latency_ms"] >= 0 for r in lines)
    text = log.read_text()
    released = [entry["logit"] for p in answer.json()["predictions"] for entry in p["top"]]
    assert not any(repr(value) in text for value in released)
    assert not any(secret in text for secret in (ALICE, BARE, CAROL, "not-a-key"))


def _samples(exposition: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(exposition) for sample in family.samples}


def test_metrics_cover_requests_latency_batches_queue_and_images(keyed_app: AppClient) -> None:
    keyed_app.post("/v1/predict", json=pixels(2), headers=bearer(CAROL))
    samples = _samples(keyed_app.get("/metrics", headers=bearer(METRICS)).text)
    assert samples[("stingy_requests_total", (("method", "POST"), ("route", "/v1/predict"), ("status", "200")))] >= 1
    assert samples[("stingy_request_duration_seconds_count", (("route", "/v1/predict"), ("status", "200")))] >= 1
    assert samples[("stingy_batch_size_images_count", ())] >= 1 and samples[("stingy_batch_size_images_sum", ())] >= 2
    assert samples[("stingy_forward_duration_seconds_count", ())] >= 1
    assert samples[("stingy_queue_depth_images", ())] == 0
    assert samples[("stingy_workers", ())] == samples[("stingy_ready_workers", ())] == 1
    assert samples[("stingy_images_served_total", (("key", "carol"),))] >= 2
    assert not any("secret" in name or any("secret" in str(v) for _, v in labels) for name, labels in samples)
