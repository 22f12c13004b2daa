"""The real thing: ``stingy-serve`` in its own process on 127.0.0.1, reached over the network by httpx and by
a standard Open Inference Protocol client; graceful shutdown; the command line and its settings."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.cli import build_parser, main, settings_from_args
from defense import make_policy
from training.console import UsageError
from training.devices import usable_cpus
from tests.api.conftest import Reference, random_images, worker_pids
from app.launch import ServerProcess, running_server

SECRET, METRICS_SECRET = "net-secret-1", "net-metrics-2"
AUTH = {"Authorization": f"Bearer {SECRET}"}
STINGY = make_policy("stingy", sparse_ratio=0.2)


@pytest.fixture(scope="module")
def server(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server with the default number of workers (``auto``: one per usable core)."""
    folder = tmp_path_factory.mktemp("server")
    args = ["--checkpoint", str(tiny_teacher), "--device", "cpu", "--policy", "stingy", "--sparse-ratio", "0.2", "--budget-images", "1000",
            "--budget-db", str(folder / "budget.sqlite3"), "--access-log", str(folder / "access.jsonl")]
    with running_server(args, env={"STINGY_API_KEYS": f"tester:{SECRET}", "STINGY_METRICS_KEY": METRICS_SECRET}, log_dir=folder) as started:
        yield started


@pytest.mark.slow
def test_a_server_started_without_workers_runs_one_per_usable_core(server: ServerProcess) -> None:
    """The default, ``--workers auto``: a supervising parent and one worker process per core this process may use
    (a single process where that is one core)."""
    cores = usable_cpus()
    assert len(worker_pids(server.process.pid)) == (cores if cores > 1 else 0), server.output()[-2000:]
    assert ("Started parent process" in server.output()) == (cores > 1), server.output()[-2000:]


@pytest.mark.slow
def test_v1_and_v2_over_the_network(server: ServerProcess, reference: Reference) -> None:
    images = random_images(2, seed=11)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers=AUTH).json()["released_per_image"] == 2
        files = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image[0].numpy(), "L").save(buffer, "PNG")
            files.append(("files", (f"{len(files)}.png", buffer.getvalue(), "image/png")))
        v1 = client.post("/v1/predict", files=files, headers=AUTH)
        assert v1.status_code == 200 and v1.headers["x-budget-remaining"] == "998"
        released = reference.released(images, STINGY)
        assert [[(e["class"], e["logit"]) for e in p["top"]] for p in v1.json()["predictions"]] == [
            list(zip(i, v)) for i, v in zip(released.indices.tolist(), released.values.tolist())]
        tensor = {"name": "images", "shape": [2, 1, 28, 28], "datatype": "UINT8", "data": images.reshape(-1).tolist()}
        v2 = client.post("/v2/models/teacher/infer", json={"inputs": [tensor]}, headers={"X-API-Key": SECRET})
        assert v2.status_code == 200 and v2.headers["x-budget-remaining"] == "996"
        assert v2.json()["outputs"][1]["data"] == released.values.reshape(-1).tolist()
        assert client.get("/metrics").status_code == 401
        assert "stingy_images_served_total" in client.get("/metrics", headers={"X-API-Key": METRICS_SECRET}).text


@pytest.mark.slow
def test_a_standard_v2_client_works_unchanged(server: ServerProcess, reference: Reference) -> None:
    """Triton's HTTP client, with its defaults (binary input tensors, binary outputs requested). It writes
    into the ``headers`` dict it is given, so every call gets a fresh one."""
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("teacher", headers=dict(AUTH))
    assert client.get_server_metadata()["name"] == "stingy-teacher"
    metadata = client.get_model_metadata("teacher", headers=dict(AUTH))
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    images = random_images(3, seed=12)
    pixels = (images.float() / 255.0).numpy()
    released = reference.released(images.float() / 255.0, STINGY)
    for binary in (True, False):
        tensor = httpclient.InferInput("images", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("topk_indices", binary_data=binary), httpclient.InferRequestedOutput("topk_logits")]
        result = client.infer("teacher", [tensor], outputs=outputs, headers=dict(AUTH), request_id="r1")
        assert result.get_response()["id"] == "r1"
        np.testing.assert_array_equal(result.as_numpy("topk_indices"), released.indices.numpy())
        np.testing.assert_array_equal(result.as_numpy("topk_logits"), released.values.numpy())
        assert result.as_numpy("probabilities") is None
    everything = client.infer("teacher", [tensor], headers=dict(AUTH), model_version="1")
    assert everything.as_numpy("probabilities").shape == (3, 10)
    with pytest.raises(Exception, match="not found"):
        client.infer("other", [tensor], headers=dict(AUTH))
    client.close()


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_complete(tiny_teacher: Path, tmp_path: Path) -> None:
    """A request waits in the batcher (3 s delay) when SIGTERM arrives: it still gets its answer, then the
    process ends. One process (``--workers 1``), whose own shutdown lines are checked; tests/state/test_servers.py
    stops a server of two workers with SIGTERM."""
    args = ["--checkpoint", str(tiny_teacher), "--workers", "1", "--max-delay-ms", "3000", "--access-log", ""]
    with running_server(args, log_dir=tmp_path) as started:
        answer: dict[str, httpx.Response] = {}
        images = random_images(1, seed=13)

        def ask() -> None:
            answer["response"] = httpx.post(started.url + "/v1/predict", json={"pixels": images.tolist()}, timeout=30)

        worker = threading.Thread(target=ask)
        worker.start()
        deadline = time.monotonic() + 10
        while "stingy_queue_depth_images 1.0" not in httpx.get(started.url + "/metrics").text:
            assert time.monotonic() < deadline, "the request never reached the batcher"
            time.sleep(0.02)
        status = started.terminate(timeout=30)
        worker.join(30)
    assert answer["response"].status_code == 200 and len(answer["response"].json()["predictions"]) == 1
    output = started.output()
    assert status == -signal.SIGTERM, f"the process ends by SIGTERM (shell status 143), got {status}: {output[-2000:]}"
    assert "WARNING stingy.serve: NO API KEYS: anyone who can connect to 127.0.0.1:" in output  # started without keys
    # uvicorn's graceful shutdown, in order: stop accepting, wait for the connection in flight, stop the app.
    lines = ["Shutting down", "Waiting for connections to close", "Finished server process"]
    assert all(line in output for line in lines), output[-2000:]
    assert sorted(lines, key=output.index) == lines, output[-2000:]


# ---- the command line ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--checkpoint", "/nonexistent/teacher.safetensors"], {}, "checkpoint /nonexistent/teacher.safetensors does not exist"),
    ([], {}, "invalid settings: checkpoint: Field required"),
    (["--checkpoint", "TINY", "--k", "50"], {}, "k=50 exceeds the number of classes K=10"),
    (["--checkpoint", "TINY", "--policy-param", "bogus"], {}, "--policy-param needs NAME=VALUE"),
    (["--checkpoint", "TINY", "--policy", "rounding", "--policy-param", "decimals=99"], {}, "decimals must be an integer in [0, 8]"),
    (["--checkpoint", "TINY"], {"STINGY_MAX_BATCH_SIZE": "0"}, "max_batch_size: Input should be greater than or equal to 1"),
    (["--checkpoint", "TINY", "--rate-burst", "5"], {}, "rate_burst needs rate_limit"),
    (["--checkpoint", "TINY"], {"STINGY_DEVICE": "tpu"}, "invalid settings: device: unsupported device 'tpu'; use auto, cpu, cuda or cuda:N"),
    (["--checkpoint", "TINY"], {"STINGY_API_KEYS": "alice:"}, "API key entry 1 has an empty secret"),
    (["--checkpoint", "TINY", "--workers", "0"], {}, "workers: Input should be greater than or equal to 1"),
    (["--checkpoint", "TINY", "--workers", "many"], {}, "workers: expected a number of processes or 'auto', got 'many'"),
    (["--checkpoint", "TINY"], {"STINGY_STATE": "memcached://x:1"}, "state must be 'sqlite' or a Redis URL"),
    (["--checkpoint", "TINY", "--policy", "normal"], {}, "releases the raw logits for all 10 classes, not just N < K"),
    (["--checkpoint", "TINY", "--sparse-ratio", "0.95"], {}, "(N = K: nothing is masked), not just N < K logits per image; serve it "
                                                             "only with --allow-disclosing-policy"),
    (["--checkpoint", "TINY", "--budget-images", "5"], {"STINGY_API_KEYS": "a:one,two"}, "API key entry 2 has no name"),
    (["--checkpoint", "TINY"], {"STINGY_API_KEYS": "a:one", "STINGY_METRICS_KEY": "one"}, "must differ from every API key"),
    (["--checkpoint", "TINY"], {"STINGY_API_KEYS_FILE": "/nonexistent/keys"}, "No such file or directory: '/nonexistent/keys'"),
])
def test_bad_settings_exit_with_status_2_and_one_line(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str],
                                                       message: str) -> None:
    """``TINY`` stands for a valid checkpoint."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([str(tiny_teacher) if arg == "TINY" else arg for arg in argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("stingy-serve: ") and message in error and error.count("\n") == 1, error


def test_auto_workers_are_one_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` counts the cores in the process's affinity mask (a container's cpuset), not the machine's."""
    from app.settings import ServeSettings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.setenv("STINGY_WORKERS", "auto")
    assert ServeSettings(checkpoint=Path("x")).workers == 3
    assert ServeSettings(checkpoint=Path("x"), workers=" AUTO ").workers == 3
    assert ServeSettings(checkpoint=Path("x"), workers="2").workers == 2


def test_the_default_is_auto_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither ``--workers`` nor ``STINGY_WORKERS``: one worker per usable core, checked like a given ``auto``."""
    from app.settings import ServeSettings

    monkeypatch.delenv("STINGY_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert usable_cpus() == 3
    assert ServeSettings(checkpoint=Path("x")).workers == 3
    assert settings_from_args(build_parser().parse_args(["--checkpoint", "x"])).workers == 3
    assert settings_from_args(build_parser().parse_args(["--checkpoint", "x", "--workers", "1"])).workers == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(300)))
    with pytest.raises(UsageError, match="workers: Input should be less than or equal to 256"):
        settings_from_args(build_parser().parse_args(["--checkpoint", "x"]))


def test_flags_override_the_environment(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STINGY_CHECKPOINT", str(tiny_teacher))
    monkeypatch.setenv("STINGY_PORT", "9000")
    monkeypatch.setenv("STINGY_POLICY", "least")
    monkeypatch.setenv("STINGY_SPARSE_RATIO", "0.3")
    monkeypatch.setenv("STINGY_API_KEYS", "a:one, b:two")
    monkeypatch.setenv("STINGY_API_KEYS_FILE", "/run/secrets/api_keys")  # how the compose stack passes its secret
    from_env = settings_from_args(build_parser().parse_args([]))
    assert (from_env.port, from_env.policy, from_env.sparse_ratio, len(from_env.api_keys)) == (9000, "least", 0.3, 2)
    assert from_env.api_keys_file == Path("/run/secrets/api_keys")
    assert from_env.served_name == "teacher" and from_env.batching is True
    flags = settings_from_args(build_parser().parse_args(["--port", "9001", "--k", "2", "--no-batching", "--model-name", "fm"]))
    assert (flags.port, flags.policy, flags.sparse_ratio, flags.k, flags.batching, flags.served_name) == (9001, "stingy", None, 2, False, "fm")
    params = settings_from_args(build_parser().parse_args(["--policy", "gaussian_noise", "--policy-param", "sigma=0.2"]))
    assert params.release_policy.config() == {"name": "gaussian_noise", "sigma": 0.2}
