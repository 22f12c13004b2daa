"""The serving benchmark's parts that can be wrong without a slow run: its request bodies (each format is
answered by the real app), its reading of hey's record, its clients that honour Retry-After, and its one-line
refusal without hey."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import serving
from bench.loadgen import FORMATS, Body, _parse_csv, make_body, run_retrying
from bench.profile_summary import summarise
from tests.api.conftest import AppClient, random_images


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_body_format_is_answered_for_every_image(stingy_app: AppClient, fmt: str) -> None:
    body = make_body(fmt, "teacher", random_images(3, seed=5))
    response = stingy_app.post(body.path, content=body.content, headers=body.headers)
    assert response.status_code == 200, response.text
    document = response.json()
    answered = len(document["predictions"]) if fmt == "v1-png" else document["outputs"][0]["shape"][0]
    assert answered == 3


def test_hey_record_gives_rate_inputs_and_percentiles_of_the_200s_only() -> None:
    header = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n"
    rows = [f"{0.010 * (i + 1):.4f},0,0,0,0,0,200,{0.1 * i:.4f}" for i in range(100)] + ["0.0005,0,0,0,0,0,503,10.0"]
    result = _parse_csv(header + "\n".join(rows) + "\n", client_cpu_s=0.5)
    assert (result.requests, result.ok, result.statuses) == (101, 100, {"200": 100, "503": 1})
    assert result.wall_s == pytest.approx(9.9 + 1.0)  # the end of the last answer
    assert result.p50_ms == pytest.approx(505.0) and result.p99_ms == pytest.approx(990.1)


class AlwaysOverloaded(BaseHTTPRequestHandler):
    """Reads the request and answers 503 with ``Retry-After: 1``, counting the requests."""

    protocol_version = "HTTP/1.1"
    requests = 0

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def overloaded_server() -> Iterator[str]:
    AlwaysOverloaded.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysOverloaded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_retrying_clients_wait_as_long_as_retry_after_says(overloaded_server: str) -> None:
    """Two clients for 1.5 s against a server that always answers 503 with Retry-After: 1 send at 0 s and 1 s
    each, and no more (hey would resend at once, thousands of times)."""
    result = run_retrying(overloaded_server, Body("/infer", b"x" * 1000, {"Content-Type": "application/octet-stream"}),
                          clients=2, seconds=1.5)
    assert (result.requests, result.ok, result.statuses) == (4, 0, {"503": 4}) == (AlwaysOverloaded.requests, 0, {"503": 4})
    assert 1.0 <= result.wall_s < 1.5


def test_without_hey_the_benchmark_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert serving.main(["--quick"]) == 2
    assert capsys.readouterr().err.strip() == "bench.serving: the serving benchmark needs the load generator 'hey': apt-get install hey"


def test_profile_summary_counts_each_function_once_per_sample_inclusive_and_at_the_top_as_self() -> None:
    stacks = ("main (/x/app/cli.py:3);serve (/x/.venv/lib/python3.11/site-packages/uvicorn/server.py:9);"
              "decode (/x/app/codecs.py:5) 3\n"
              "main (/x/app/cli.py:3);main (/x/app/cli.py:4) 1\n")
    total, inclusive, own = summarise(stacks)
    assert total == 4
    assert inclusive == {"main (app/cli.py)": 4, "serve (uvicorn/server.py)": 3, "decode (app/codecs.py)": 3}
    assert own == {"decode (app/codecs.py)": 3, "main (app/cli.py)": 1}


@pytest.mark.parametrize(("model", "share"), sorted(serving.ONE_IMAGE_TARGETS.items()))
def test_the_64_client_target_of_each_model_is_judged_against_its_own_share(model: str, share: float) -> None:
    ceiling = serving.Ceiling({32: 1000.0, 256: 2000.0}, {32: 500.0, 256: 1000.0}, 32, 10.0, 0.1)

    def judged(api_over_ceiling: float) -> bool:
        row = serving.Row(model, "v2-binary", 1, 64, 100, 100, 0, 1000 * api_over_ceiling, 5.0, 10.0, 8.0, 1.0, 0.5,
                          api_over_ceiling, api_over_ceiling)
        [target] = [t for t in serving.targets(model, ceiling, [row]) if "64 one-image clients: API" in str(t["target"])]
        assert f">= {share} " in str(target["target"])
        return bool(target["met"])

    assert judged(share) and not judged(share - 0.01)


def test_server_cpu_counts_the_processes_below_the_server_too() -> None:
    """``stingy-serve --workers N`` serves from child processes: their CPU time is the server's."""
    import subprocess
    import sys
    import time

    from bench.loadgen import process_cpu_seconds

    busy = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\nimport sys; sys.stdin.read()"
    parent = subprocess.Popen(["bash", "-c", f"{sys.executable} -c '{busy}'"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while process_cpu_seconds(parent.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_cpu_seconds(parent.pid) >= 0.5
    finally:
        parent.communicate(b"", timeout=30)


def _rows(rates: dict[int, float]) -> list[serving.Row]:
    return [serving.Row("cnn", "v2-json", 1, clients, 1, 1, 0, rate, 1.0, 2.0, 1.0, 1.0, 0.1, 0.5, 0.5) for clients, rate in rates.items()]


@pytest.mark.parametrize(("rates", "drop"), [
    ({1: 100.0, 8: 400.0, 32: 800.0}, 0.0),  # rises throughout
    ({8: 400.0, 32: 1000.0, 64: 950.0, 128: 700.0}, 0.3),  # against the best at fewer clients, not the neighbour
    ({128: 700.0, 8: 400.0, 32: 1000.0}, 0.3),  # order of the rows does not matter
    ({8: 400.0}, None),  # one client count: nothing to compare
])
def test_worst_drop_is_the_largest_fall_below_the_best_at_fewer_clients(rates: dict[int, float], drop: float | None) -> None:
    assert serving.worst_drop(_rows(rates)) == (None if drop is None else pytest.approx(drop))


def test_throughput_holds_within_the_tolerance_only() -> None:
    ceiling = serving.Ceiling({32: 1000.0, 256: 2000.0}, {32: 500.0, 256: 1000.0}, 32, 10.0, 0.1)

    def held(last: float) -> bool:
        [target] = [t for t in serving.targets("cnn", ceiling, _rows({8: 400.0, 32: 1000.0, 64: last})) if "holds" in str(t["target"])]
        return bool(target["met"])

    assert held(1000.0 * (1 - serving.HOLD_TOLERANCE)) and not held(1000.0 * (1 - serving.HOLD_TOLERANCE) - 1)


def test_server_env_is_a_name_value_pair() -> None:
    assert serving.parse_args(["--server-env", "OMP_WAIT_POLICY=PASSIVE", "--server-env", "A=b=c"]).server_env == [
        ("OMP_WAIT_POLICY", "PASSIVE"), ("A", "b=c")]
    with pytest.raises(SystemExit):
        serving.parse_args(["--server-env", "NOVALUE"])


def test_gil_contention_prints_a_row_per_model_and_switch_interval_and_stops_its_busy_thread(capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    import threading

    from bench import gil_contention

    interval, threads = sys.getswitchinterval(), threading.active_count()
    try:
        assert gil_contention.main(["--models", "cnn", "--batch", "2", "--switch-ms", "5", "0.5", "--calls", "1"]) == 0
    finally:
        sys.setswitchinterval(interval)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cnn |")]
    assert [row.split(" | ")[1] for row in rows] == ["5", "0.5"]
    assert threading.active_count() == threads


def test_the_benchmarked_server_is_one_process_unless_the_workers_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """stingy-serve's default is ``--workers auto``; the benchmarks measure one process, as their records did,
    unless ``--server-arg`` or ``STINGY_WORKERS`` says how many workers."""
    from bench import import_serving

    monkeypatch.delenv("STINGY_WORKERS", raising=False)
    assert serving.parse_args([]).server_arg == ["--workers=1"]
    assert serving.parse_args(["--server-arg=--max-delay-ms=1"]).server_arg == ["--max-delay-ms=1", "--workers=1"]
    assert import_serving.parse_args([]).server_arg == ["--workers=1"]
    for given in (["--workers=auto"], ["--workers", "4"], ["--work=2"]):
        assert serving.parse_args([f"--server-arg={arg}" for arg in given]).server_arg == given
        assert import_serving.parse_args([f"--server-arg={arg}" for arg in given]).server_arg == given
    assert serving.parse_args(["--server-env", "STINGY_WORKERS=2"]).server_arg == []
    monkeypatch.setenv("STINGY_WORKERS", "auto")
    assert serving.parse_args([]).server_arg == [] and import_serving.parse_args([]).server_arg == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("hey") is None, reason="needs the load generator hey (apt-get install hey)")
def test_the_benchmark_runs_every_series_and_judges_them(tmp_path: Path) -> None:
    """A short real run: one-image and several-image series from hey, the several-image one again from clients
    that honour Retry-After, each answered, each series judged for holding its throughput."""
    command = [sys.executable, "-m", "bench.serving", "--models", "cnn", "--formats", "v2-binary", "--images", "1", "4",
               "--clients", "1", "2", "--duration", "0.5", "--ceiling-seconds", "0.2", "--pause", "0", "--out", str(tmp_path)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    [model] = json.loads((tmp_path / "serving.json").read_text())["models"]
    assert sorted((r["images_per_request"], r["load"], r["clients"]) for r in model["rows"]) == [
        (1, "hey", 1), (1, "hey", 2), (4, "hey", 1), (4, "hey", 2), (4, "retrying", 1), (4, "retrying", 2)]
    assert all(row["answered"] > 0 for row in model["rows"])
    holds = [target["target"] for target in model["targets"] if "throughput holds" in target["target"]]
    assert [target.split(":")[0] for target in holds] == [
        "cnn, 1-image requests from hey (resending refused requests at once)",
        "cnn, 4-image requests from hey (resending refused requests at once)",
        "cnn, 4-image requests from clients honouring Retry-After"]
