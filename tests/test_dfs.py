"""DFS referral requests against a node, which has no DFS (MS-SMB2 3.3.5.15.2).

The expected statuses are smbd's (4.17, with "host msdfs = no" so that it is a
server without DFS, as the node is), measured with these same requests:

* FSCTL_DFS_GET_REFERRALS: STATUS_FS_DRIVER_REQUIRED, on IPC$ and on a share;
* FSCTL_DFS_GET_REFERRALS_EX: smbd does not know it at all, so it gets smbd's
  answer to an unknown FSCTL: STATUS_FS_DRIVER_REQUIRED on IPC$,
  STATUS_INVALID_DEVICE_REQUEST on a disk share.

(smbd with its default "host msdfs = yes" answers the first STATUS_NOT_FOUND
for a path that is no DFS link.) Both come at once: no file is looked up.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest

from gateway.protocol.constants import Command, Fsctl, Status

from .conftest import PASSWORD, USER, GatewayNode
from .rawclient import RawClient

_NO_FILE = 0xFFFFFFFFFFFFFFFF
_IOCTL = struct.Struct("<HHIQQIIIIIIII")
_MAX_REFERRAL_LEVEL = 4


def _ioctl(code: int, data: bytes) -> bytes:
    return _IOCTL.pack(57, 0, code, _NO_FILE, _NO_FILE, 64 + _IOCTL.size, len(data), 0, 0, 0,
                       8192, 1, 0) + data  # fmt: skip


def _referral(path: str) -> bytes:
    """REQ_GET_DFS_REFERRAL (MS-DFSC 2.2.2)."""
    return struct.pack("<H", _MAX_REFERRAL_LEVEL) + (path + "\0").encode("utf-16-le")


def _referral_ex(path: str) -> bytes:
    """REQ_GET_DFS_REFERRAL_EX (MS-DFSC 2.2.3), no site name."""
    name = path.encode("utf-16-le")
    request_data = struct.pack("<H", len(name)) + name
    return struct.pack("<HHI", _MAX_REFERRAL_LEVEL, 0, len(request_data)) + request_data


def _paths(node: GatewayNode) -> list[str]:
    return [f"\\{node.host}\\{node.share}", f"\\{node.host}\\{node.share}\\dir\\f", "\\x\\y", ""]


@pytest.fixture(params=["IPC$", "share"])
def tree(
    request: pytest.FixtureRequest, module_gateway: GatewayNode
) -> Iterator[tuple[RawClient, str]]:
    """A client logged on and connected to IPC$, then to the disk share."""
    c = RawClient(module_gateway.host, module_gateway.port)
    c.login(USER, PASSWORD, request.param, module_gateway.host)
    yield c, request.param
    c.close()


def _status(client: RawClient, code: int, data: bytes) -> int:
    start = time.monotonic()
    reply = client.request(Command.IOCTL, _ioctl(code, data))
    assert time.monotonic() - start < 1.0, "a DFS referral should be refused at once"
    return reply.status


def test_get_referrals_fs_driver_required(
    tree: tuple[RawClient, str], module_gateway: GatewayNode
) -> None:
    client, share = tree
    for path in _paths(module_gateway):
        status = _status(client, Fsctl.DFS_GET_REFERRALS, _referral(path))
        assert status == Status.FS_DRIVER_REQUIRED, (share, path, hex(status))


def test_get_referrals_ex_as_an_unknown_fsctl(
    tree: tuple[RawClient, str], module_gateway: GatewayNode
) -> None:
    client, share = tree
    want = Status.FS_DRIVER_REQUIRED if share == "IPC$" else Status.INVALID_DEVICE_REQUEST
    for path in _paths(module_gateway):
        status = _status(client, Fsctl.DFS_GET_REFERRALS_EX, _referral_ex(path))
        assert status == want, (share, path, hex(status))


def test_connection_goes_on_after_referrals(tree: tuple[RawClient, str]) -> None:
    client, _share = tree
    _status(client, Fsctl.DFS_GET_REFERRALS, _referral("\\a\\b"))
    assert client.request(Command.ECHO, struct.pack("<HH", 4, 0)).status == Status.SUCCESS
