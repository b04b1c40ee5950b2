"""Compound requests (MS-SMB2 3.3.5.2.7) sent by smbprotocol to a node.

Related requests inherit the handle of the chain, only a failed CREATE
passes its error on, the all-ones FileId outside a related run is just an
unknown handle, every reply of a chain is padded to 8 bytes, a
CHANGE_NOTIFY that would block the related requests after it fails with
STATUS_INTERNAL_ERROR, and a CREATE waiting for a break splits the chain
without stalling the connection.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from smbprotocol.change_notify import CompletionFilter, SMB2ChangeNotifyRequest
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    SMB2QueryInfoRequest,
)

from clients.messages import BreakNotice
from clients.smb2client import Open as HolderOpen
from clients.smb2client import SMB2Client
from gateway.protocol.constants import OplockLevel

from .conftest import PASSWORD, USER, GatewayNode, start_gateway
from .smbp import SmbpTree

ALL_ONES = b"\xff" * 16
READ = FilePipePrinterAccessMask.FILE_READ_DATA | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
SUCCESS = 0
ACCESS_DENIED = 0xC0000022
OBJECT_NAME_NOT_FOUND = 0xC0000034
FILE_CLOSED = 0xC0000128
INTERNAL_ERROR = 0xC00000E5
PENDING = 0x00000103


def outcome(request: Any, receive: Callable[[Any], Any]) -> tuple[int, bytes]:
    """(status, reply body as received, padding included) through smbprotocol's receiver."""
    try:
        receive(request)
    except SMBResponseException as e:
        return e.status, request.response["data"].get_value()
    return int(request.response["status"].get_value()), request.response["data"].get_value()


def raw_outcome(client: SmbpTree, request: Any) -> tuple[int, bytes]:
    """The same for a request built by hand (no receiver of its own)."""
    return outcome(request, client.conn.receive)


def query_basic(file_id: bytes = ALL_ONES) -> SMB2QueryInfoRequest:
    q = SMB2QueryInfoRequest()
    q["info_type"] = 1  # SMB2_0_INFO_FILE
    q["file_info_class"] = 4  # FileBasicInformation
    q["output_buffer_length"] = 4096
    q["file_id"] = file_id
    return q


@pytest.fixture
def client(module_gateway: GatewayNode) -> Iterator[SmbpTree]:
    c = SmbpTree(module_gateway)
    yield c
    c.close()


def test_related_chain_survives_a_failed_write(
    client: SmbpTree, module_gateway: GatewayNode
) -> None:
    """CREATE (read only), READ, WRITE (denied), READ, CLOSE: only the WRITE fails."""
    (module_gateway.share_dir / "c_rel6.txt").write_bytes(b"123")
    f, create, on_create = client.open(
        "c_rel6.txt", access=READ, disposition=CreateDisposition.FILE_OPEN, send=False
    )
    read1, on_read1 = f.read(0, 3, send=False)
    write, on_write = f.write(b"x", 0, send=False)
    read2, on_read2 = f.read(0, 3, send=False)
    close, on_close = f.close(send=False)
    reqs = client.compound([create, read1, write, read2, close], related=True)
    results = [
        outcome(r, rc)
        for r, rc in zip(reqs, [on_create, on_read1, on_write, on_read2, on_close], strict=True)
    ]
    assert [s for s, _ in results] == [SUCCESS, SUCCESS, ACCESS_DENIED, SUCCESS, SUCCESS]
    # READ reply: 16-byte body and 3 bytes of data, padded to 24 (smb2.compound.compound-padding);
    # the last reply of the chain (CLOSE, 60 bytes) is padded too.
    assert len(results[1][1]) == 24 and results[1][1][16:19] == b"123"
    assert len(results[3][1]) == 24
    assert len(results[4][1]) == 64
    assert (module_gateway.share_dir / "c_rel6.txt").read_bytes() == b"123"


def test_unrelated_reads_each_padded(client: SmbpTree, module_gateway: GatewayNode) -> None:
    (module_gateway.share_dir / "c_pad.txt").write_bytes(b"456")
    f = client.open("c_pad.txt", access=READ, disposition=CreateDisposition.FILE_OPEN)
    (r1, on1), (r2, on2) = f.read(0, 3, send=False), f.read(0, 3, send=False)
    reqs = client.compound([r1, r2], related=False)
    for req, on in zip(reqs, [on1, on2], strict=True):
        status, body = outcome(req, on)
        assert status == SUCCESS and len(body) == 24 and body[16:19] == b"456"
    f.close()


def test_unrelated_all_ones_file_id_is_an_unknown_handle(client: SmbpTree) -> None:
    """CREATE then unrelated CLOSEs naming the all-ones FileId: STATUS_FILE_CLOSED
    (smb2.compound.unrelated1); the handle the CREATE made stays open."""
    f, create, on_create = client.open("c_unrel.txt", send=False)
    close, _ = f.close(send=False)
    reqs = client.compound([create, close, close], related=False)
    assert outcome(reqs[0], on_create)[0] == SUCCESS
    assert raw_outcome(client, reqs[1])[0] == FILE_CLOSED
    assert raw_outcome(client, reqs[2])[0] == FILE_CLOSED
    f.write(b"still open", 0)
    f.close()


def test_failed_create_error_reaches_related_requests(client: SmbpTree) -> None:
    f, create, on_create = client.open(
        "c_missing.txt", disposition=CreateDisposition.FILE_OPEN, send=False
    )
    read, _ = f.read(0, 1, send=False)
    close, _ = f.close(send=False)
    reqs = client.compound([create, read, close], related=True)
    assert outcome(reqs[0], on_create)[0] == OBJECT_NAME_NOT_FOUND
    assert raw_outcome(client, reqs[1])[0] == OBJECT_NAME_NOT_FOUND
    assert raw_outcome(client, reqs[2])[0] == OBJECT_NAME_NOT_FOUND


def test_notify_before_related_requests_fails(client: SmbpTree) -> None:
    """CREATE (directory), CHANGE_NOTIFY, QUERY_INFO: the notify would hold the
    QUERY_INFO back indefinitely, so it fails with STATUS_INTERNAL_ERROR as on
    Windows (smb2.compound.interim2) and the QUERY_INFO is answered."""
    d, create, on_create = client.open(
        "c_notify_dir", access=FilePipePrinterAccessMask.GENERIC_ALL,
        disposition=CreateDisposition.FILE_OPEN_IF, options=CreateOptions.FILE_DIRECTORY_FILE,
        send=False,
    )  # fmt: skip
    notify = SMB2ChangeNotifyRequest()
    notify["output_buffer_length"] = 4096
    notify["file_id"] = ALL_ONES
    notify["completion_filter"] = CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME
    reqs = client.compound([create, notify, query_basic()], related=True)
    assert outcome(reqs[0], on_create)[0] == SUCCESS
    assert raw_outcome(client, reqs[1])[0] == INTERNAL_ERROR
    status, body = raw_outcome(client, reqs[2])
    assert status == SUCCESS
    attributes = struct.unpack_from("<I", body, 8 + 32)[0]  # QUERY_INFO header, then FileBasic
    assert attributes & 0x10  # FILE_ATTRIBUTE_DIRECTORY
    d.close()


@pytest.fixture
def short_break_node(tmp_path: Path) -> Iterator[GatewayNode]:
    node = start_gateway(tmp_path / "gw", extra=["--break-timeout", "3"])
    yield node
    assert node.stop() == 0
    assert "Traceback" not in node.log(), node.log()[-4000:]


def test_create_waiting_for_a_break_splits_the_chain(short_break_node: GatewayNode) -> None:
    """A related CREATE, QUERY_INFO, CLOSE whose CREATE waits for a batch
    oplock break that is never acknowledged: the CREATE gets an interim
    STATUS_PENDING, the connection answers an ECHO meanwhile, and the rest of
    the chain runs on the CREATE's handle once it completes."""
    node = short_break_node
    breaks: list[BreakNotice] = []

    async def holder_and_compound() -> dict[str, Any]:
        holder = await SMB2Client.connect(node.host, node.port, user=USER, password=PASSWORD)
        tree = await holder.tree_connect("share")

        def no_ack(_op: HolderOpen, notice: BreakNotice) -> None:
            breaks.append(notice)

        await tree.create("c_break.txt", oplock=OplockLevel.BATCH, on_break=no_ack)
        try:
            return await asyncio.to_thread(compound_side, node)
        finally:
            await holder.close()

    result = asyncio.run(asyncio.wait_for(holder_and_compound(), 60))
    assert breaks, "the holder got no break"
    assert result["interim"] == PENDING
    assert result["echo_before_rest"], "the connection stalled behind the CREATE"
    assert result["echo_seconds"] < 2.0
    assert result["statuses"] == [SUCCESS, SUCCESS, SUCCESS]


def compound_side(node: GatewayNode) -> dict[str, Any]:
    c = SmbpTree(node)
    try:
        f, create, on_create = c.open(
            "c_break.txt", access=READ, disposition=CreateDisposition.FILE_OPEN, send=False
        )
        close, on_close = f.close(send=False)
        reqs = c.compound([create, query_basic(), close], related=True)
        # The worker thread stores the interim reply; smbprotocol's receive()
        # would wait through it.
        deadline = time.monotonic() + 10
        while reqs[0].response is None and time.monotonic() < deadline:
            time.sleep(0.01)
        interim = int(reqs[0].response["status"].get_value())
        t0 = time.monotonic()
        c.conn.echo(sid=c.session.session_id)
        echo_seconds = time.monotonic() - t0
        echo_before_rest = reqs[1].response is None
        statuses = [
            outcome(reqs[0], on_create)[0],
            raw_outcome(c, reqs[1])[0],
            outcome(reqs[2], on_close)[0],
        ]
        return {
            "interim": interim,
            "echo_seconds": echo_seconds,
            "echo_before_rest": echo_before_rest,
            "statuses": statuses,
        }
    finally:
        c.close()
