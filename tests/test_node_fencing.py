"""A node cut off from Redis drops its clients before the others release their grants."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from gateway.localredis import LocalRedis

from .conftest import start_gateway
from .smbp import logged_on


def test_a_node_that_loses_redis_drops_its_clients(tmp_path: Path) -> None:
    with LocalRedis() as redis:
        assert redis.proc is not None
        node = start_gateway(tmp_path / "gw", extra=["--bus", redis.url, "--node-ttl", "1.5"])
        try:
            conn, tree = logged_on(node.host, node.port, require_signing=True)
            tree.disconnect()  # the connection answers while the bus is there
            tree.connect()
            os.kill(redis.proc.pid, signal.SIGSTOP)  # Redis hangs: no heartbeat gets through
            try:
                time.sleep(3.0)
                with pytest.raises(Exception):  # noqa: B017 - any transport error will do
                    tree.disconnect()
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            assert "lost the bus: dropping every client connection" in node.log()
            # Back on the bus, the node serves new connections again.
            time.sleep(1.0)
            conn2, tree2 = logged_on(node.host, node.port, require_signing=True)
            tree2.disconnect()
            conn2.disconnect(True)
        finally:
            rc = node.stop()
        assert rc == 0, node.log()[-3000:]
