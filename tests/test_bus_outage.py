"""A node whose bus is down (issue 17, item 3), with a real redis-server and
real node processes:

- requests the bus cannot decide get its status (STATUS_INTERNAL_ERROR),
  and the log says so once per outage, with no traceback per request;
- a node the bus cannot vouch for (its heartbeat not renewed for most of
  its TTL) stops listening, says so once, and listens again once it is back.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from smbprotocol.exceptions import SMBResponseException

from .conftest import GatewayNode, start_gateway
from .redis_fixtures import start_redis
from .smbp import SmbpTree, logged_on

STATUS_INTERNAL_ERROR = 0xC00000E5  # BusUnavailable.status
UNAVAILABLE = "the bus is unavailable"
ANSWERS_AGAIN = "the bus answers again"
NOT_ACCEPTING = "not accepting new connections while the bus cannot vouch"
ACCEPTING = "accepting new connections on"


def _wait_for(what: Callable[[], bool], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {why}")
        time.sleep(0.05)


def _stopped(node: GatewayNode) -> str:
    rc = node.stop()
    log = node.log()
    assert rc == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    return log


def test_requests_in_a_bus_outage_get_its_status_and_one_warning(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis")
    assert redis.proc is not None
    # Commands time out after 0.5 s; the node fences only after 6 s (0.6 of
    # its TTL), so the outage below is one the node rides out.
    node = start_gateway(tmp_path / "gw", extra=[
        "--bus", f"redis://127.0.0.1:{redis.port}/0?timeout=0.5", "--node-ttl", "10",
    ])  # fmt: skip
    try:
        client = SmbpTree(node)
        client.open("before.txt").close()
        os.kill(redis.proc.pid, signal.SIGSTOP)  # Redis hangs: every command times out
        try:
            for i in range(4):
                with pytest.raises(SMBResponseException) as err:
                    client.open(f"during{i}.txt")
                assert err.value.status == STATUS_INTERNAL_ERROR
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        _wait_for(lambda: ANSWERS_AGAIN in node.log(), 10, "the node never saw the bus back")
        client.open("after.txt").close()  # the same connection: nobody was dropped
        client.close()
    finally:
        log = _stopped(node)
        redis.stop()
    assert log.count(UNAVAILABLE) == 1, log
    assert log.count(ANSWERS_AGAIN) == 1, log
    assert "4 request(s) failed meanwhile" in log, log
    assert "handler for CREATE failed" not in log
    assert NOT_ACCEPTING not in log  # vouched for throughout: it kept listening


def _refused(node: GatewayNode) -> bool:
    try:
        with socket.create_connection((node.host, node.port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_a_node_the_bus_cannot_vouch_for_accepts_no_connections(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis")
    assert redis.proc is not None
    node = start_gateway(tmp_path / "gw", extra=[
        "--bus", f"redis://127.0.0.1:{redis.port}/0", "--node-ttl", "1.5",
    ])  # fmt: skip
    try:
        conn, tree = logged_on(node.host, node.port)
        tree.disconnect()
        conn.disconnect(True)
        os.kill(redis.proc.pid, signal.SIGSTOP)  # no heartbeat gets through
        try:
            _wait_for(lambda: NOT_ACCEPTING in node.log(), 10, "the node kept listening")
            assert _refused(node)  # its address is given up, as CTDB releases it
            time.sleep(1.0)  # still cut off: still refused, and said only once
            assert _refused(node)
            assert node.log().count(NOT_ACCEPTING) == 1
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        _wait_for(lambda: ACCEPTING in node.log(), 15, "the node did not listen again")
        client = SmbpTree(node)  # serving again, the bus deciding opens
        client.open("back.txt").close()
        client.close()
    finally:
        log = _stopped(node)
        redis.stop()
    assert log.count(NOT_ACCEPTING) == 1, log
    assert log.count(f"the bus vouches for it again: {ACCEPTING}") == 1, log
