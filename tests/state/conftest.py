"""Fixtures for the state-store tests: a real ``redis-server`` per module, emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.launch import RedisServer, redis_server_available


@pytest.fixture(scope="module")
def redis_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not redis_server_available():
        pytest.skip("redis-server not installed (apt-get install redis-server; scripts/test.sh does)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(redis_module: RedisServer) -> RedisServer:
    """The module's Redis, running and empty."""
    if redis_module.process is None:
        redis_module.start()
    with redis_module.client() as client:
        client.flushall()
    return redis_module
