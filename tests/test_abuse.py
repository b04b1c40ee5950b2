"""10,000 abusive requests from several connections, while an honest client
works on the same node (issue 16, "Done when").

Four abusers log on and send, eight at a time without waiting, a mix of what
the node must refuse or bound: READs that underpay their credits, CREATEs
past the open limit, CHANGE_NOTIFYs past the waiting-request limit, unknown
commands, truncated bodies, replayed MessageIds and oversized compounds (the
last two end the connection; the abuser logs on again). Strangers open
sockets and announce frames of a megabyte. Meanwhile an honest client
(smbprotocol) writes and reads a file, one request at a time. It must see
every answer right, with a p99 latency under 50 ms, and the node's memory
must stay under 400 MiB.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from smbprotocol.connection import Connection
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from clients import messages
from gateway.protocol.constants import Command, CompletionFilter
from gateway.protocol.constants import CreateOptions as CO
from gateway.protocol.header import Header

from .conftest import PASSWORD, USER, GatewayNode, start_gateway
from .rawclient import RawClient

ABUSIVE_REQUESTS = 10_000
ABUSERS = 4
PIPELINE = 8
P99_BOUND = 0.050
RSS_BOUND = 400 * 1024 * 1024


@pytest.fixture
def node(tmp_path: Path) -> Iterator[GatewayNode]:
    conf = tmp_path / "limits.toml"
    conf.write_text("max_opens_per_connection = 200\nmax_pending_per_connection = 50\n")
    gw = start_gateway(tmp_path / "gw", extra=["--config", str(conf)])
    yield gw
    assert gw.stop() == 0
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class _Abuser:
    """One logged-on raw connection sending what the node must refuse."""

    def __init__(self, node: GatewayNode, seed: int) -> None:
        self.node = node
        self.rng = random.Random(seed)
        self.sent = 0
        self.client = self._login()

    def _login(self) -> RawClient:
        client = RawClient(self.node.host, self.node.port, timeout=10)
        client.login(USER, PASSWORD, self.node.share, self.node.host)
        client.request(Command.ECHO, struct.pack("<HH", 4, 0), credits=256)
        self.fid = self._open(client, "abused.bin", 0)
        self.dir_fid = self._open(client, "watched", CO.DIRECTORY_FILE)
        return client

    @staticmethod
    def _open(client: RawClient, name: str, options: int) -> messages.FileId:
        body = messages.create_request(name, access=0x0012019F if not options else 0x001200A9,
                                       share=7, disposition=3, options=options)  # fmt: skip
        client.request(Command.CREATE, body)
        return messages.parse_create_response(client.last_body).file_id

    def _message(self) -> bytes:
        c = self.client
        kind = self.rng.randrange(7)
        if kind == 0:  # a 1 MiB READ paid with one credit
            body = messages.read_request(self.fid, 0, 1 << 20)
            cmd = Command.READ
        elif kind == 1:  # CREATEs until the open limit answers
            name = f"many/{self.rng.randrange(10**9)}.txt"
            body = messages.create_request(name, access=0x0012019F, share=7, disposition=3)
            cmd = Command.CREATE
        elif kind == 2:  # a watch that waits, until the waiting limit answers
            filt = CompletionFilter.FILE_NAME
            body = struct.pack("<HHIQQII", 32, 0, 4096, *self.dir_fid, filt, 0)
            cmd = Command.CHANGE_NOTIFY
        elif kind == 3:  # no such command
            body, cmd = b"\x00" * 8, 0x42
        elif kind == 4:  # a body cut short
            body, cmd = b"\x31\x00", Command.READ
        else:  # a small honest-looking query, the bulk of a flood
            body, cmd = struct.pack("<HH", 4, 0), Command.ECHO
        hdr = Header(command=cmd, message_id=c.mid, credits=1, credit_charge=1,
                     session_id=c.session_id, tree_id=c.tree_id)  # fmt: skip
        c.mid += 1
        return hdr.pack() + body

    def run(self, budget: list[int], lock: threading.Lock) -> None:
        c = self.client
        while True:
            with lock:
                if budget[0] <= 0:
                    return
                n = min(PIPELINE, budget[0])
                budget[0] -= n
            try:
                if self.rng.random() < 0.01:  # a replayed MessageId: the node hangs up
                    c.send(Command.ECHO, struct.pack("<HH", 4, 0))
                    c.mid -= 1
                    c.send(Command.ECHO, struct.pack("<HH", 4, 0))
                    raise ConnectionError("replayed")
                for _ in range(n):
                    c.send_raw(self._message())
                for _ in range(n):  # interim replies come too: read what arrives
                    if c.recv() is None:
                        raise ConnectionError("closed")
                self.sent += n
            except (ConnectionError, OSError):
                self.sent += n
                c.close()
                self.client = c = self._login()


def _stranger(node: GatewayNode, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            s = socket.create_connection((node.host, node.port), timeout=5)
            s.sendall(struct.pack(">I", 1 << 20) + b"\xfeSMB" + b"\x00" * 4096)
            s.recv(1)
            s.close()
        except OSError:
            pass
        time.sleep(0.01)


def test_an_honest_client_is_served_through_a_flood(node: GatewayNode) -> None:
    conn = Connection(uuid.uuid4(), node.host, node.port)
    conn.connect(timeout=10)
    session = Session(conn, USER, PASSWORD, auth_protocol="ntlm")
    session.connect()
    tree = TreeConnect(session, rf"\\{node.host}\share")
    tree.connect()
    f = Open(tree, "honest.bin")
    rw = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
    f.create(ImpersonationLevel.Impersonation, rw, 0, 0, CreateDisposition.FILE_OVERWRITE_IF,
             CreateOptions.FILE_NON_DIRECTORY_FILE)  # fmt: skip
    (node.share_dir / "many").mkdir()
    abusers = [_Abuser(node, seed) for seed in range(ABUSERS)]
    budget, lock, stop = [ABUSIVE_REQUESTS], threading.Lock(), threading.Event()
    threads = [threading.Thread(target=a.run, args=(budget, lock), daemon=True) for a in abusers]
    threads.append(threading.Thread(target=_stranger, args=(node, stop), daemon=True))
    latencies: list[float] = []
    peak = 0
    for t in threads:
        t.start()
    try:
        i = 0
        deadline = time.monotonic() + 240
        while any(t.is_alive() for t in threads[:-1]) and time.monotonic() < deadline:
            data = i.to_bytes(8, "little") * 512
            start = time.perf_counter()
            f.write(data, 0)
            wrote = time.perf_counter()
            assert f.read(0, len(data)) == data
            latencies += [wrote - start, time.perf_counter() - wrote]
            peak = max(peak, _rss(node.proc.pid))
            i += 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        f.close()
        conn.disconnect(True)
    assert budget[0] <= 0, "the abusers did not get through their requests in time"
    assert sum(a.sent for a in abusers) >= ABUSIVE_REQUESTS
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(f"honest requests: {len(latencies)}, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms; node peak RSS {peak / 2**20:.0f} MiB")  # fmt: skip
    assert p99 < P99_BOUND, f"p99 {p99 * 1000:.1f} ms"
    assert peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
