"""Malformed, truncated, oversized and out-of-order input against a running node.

Every message must get the protocol's error or a disconnect; the node must
keep serving other connections and log no crash.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol.constants import Command
from gateway.protocol.header import Header

from .conftest import PASSWORD, USER, GatewayNode
from .rawclient import NEGOTIATE_21, RawClient

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def assert_alive(node: GatewayNode) -> None:
    assert node.proc.poll() is None, node.log()[-3000:]
    c = RawClient(node.host, node.port)
    try:
        reply = c.request(Command.NEGOTIATE, NEGOTIATE_21)
        assert reply.status == 0
    finally:
        c.close()


def send_and_drain(node: GatewayNode, payload: bytes, framed: bool = True) -> None:
    c = RawClient(node.host, node.port, timeout=5)
    try:
        if framed:
            c.send_raw(payload)
        else:
            c.sock.sendall(payload)
        try:
            c.recv()  # a reply or a close; either is fine, a hang is not
        except (TimeoutError, ConnectionError, struct.error):
            pass
    finally:
        c.close()


@FUZZ
@given(st.binary(min_size=0, max_size=512))
def test_random_frames(module_gateway: GatewayNode, data: bytes) -> None:
    send_and_drain(module_gateway, data)


@FUZZ
@given(
    st.integers(0, len(NEGOTIATE_21) + 63),
    st.binary(min_size=1, max_size=4),
    st.booleans(),
)
def test_mutated_negotiate(
    module_gateway: GatewayNode, pos: int, patch: bytes, truncate: bool
) -> None:
    msg = bytearray(Header(command=Command.NEGOTIATE, message_id=0).pack() + NEGOTIATE_21)
    msg[pos : pos + len(patch)] = patch
    if truncate:
        msg = msg[:pos]
    send_and_drain(module_gateway, bytes(msg))


def test_oversized_frame_is_dropped(module_gateway: GatewayNode) -> None:
    c = RawClient(module_gateway.host, module_gateway.port)
    try:
        c.sock.sendall(struct.pack(">I", 0x00FFFFFF) + b"\xfeSMB" + bytes(60))
        assert c.recv() is None  # the server hangs up rather than buffering 16 MiB
    finally:
        c.close()
    assert_alive(module_gateway)


def test_commands_before_negotiate_are_refused(module_gateway: GatewayNode) -> None:
    c = RawClient(module_gateway.host, module_gateway.port)
    try:
        reply = c.request(Command.TREE_CONNECT, struct.pack("<HHHH", 9, 0, 72, 0))
        assert reply.status != 0
    except ConnectionError:
        pass
    finally:
        c.close()
    assert_alive(module_gateway)


COMMANDS = [c for c in Command if c not in (Command.NEGOTIATE, Command.CANCEL)]


@FUZZ
@given(st.sampled_from(COMMANDS), st.binary(min_size=0, max_size=200), st.booleans())
def test_garbage_bodies_after_login(
    module_gateway: GatewayNode, command: Command, body: bytes, keep_size: bool
) -> None:
    c = RawClient(module_gateway.host, module_gateway.port)
    try:
        c.login(USER, PASSWORD, "share", module_gateway.host)
        if keep_size and len(body) >= 2:
            # Keep a plausible StructureSize so the handler's parser is reached.
            sizes = {Command.CREATE: 57, Command.READ: 49, Command.WRITE: 49,
                     Command.LOCK: 48, Command.IOCTL: 57, Command.QUERY_INFO: 41,
                     Command.SET_INFO: 33, Command.QUERY_DIRECTORY: 33, Command.CLOSE: 24,
                     Command.FLUSH: 24, Command.CHANGE_NOTIFY: 32, Command.OPLOCK_BREAK: 24,
                     Command.SESSION_SETUP: 25, Command.TREE_CONNECT: 9}  # fmt: skip
            body = struct.pack("<H", sizes.get(command, 4)) + body[2:]
        try:
            reply = c.request(command, body)
            # A reply carries a status; a garbage request never succeeds silently
            # except for commands with no parameters to get wrong.
            if command not in (Command.ECHO, Command.LOGOFF, Command.TREE_DISCONNECT):
                assert reply.status != 0 or len(body) >= 24
        except (TimeoutError, ConnectionError):
            pass
    finally:
        c.close()


def test_node_survived_everything(module_gateway: GatewayNode) -> None:
    assert_alive(module_gateway)
    assert "Traceback" not in module_gateway.log(), module_gateway.log()[-5000:]
