"""Large READs and WRITEs as they go through fewer copies (issue 15 item 3).

An 8 MiB WRITE is received straight into its own buffer
(``gateway.smb.receiver``, ``gateway.protocol.framing``); a READ answers from
the buffer its data was read into, sent as several buffers, signed where it
lies or sealed (``gateway.protocol.wire.encode_parts``). Samba's smbclient
moves files in 8 MiB requests (the node's MaxReadSize and MaxWriteSize), so
its put and get take those paths, plain, signed and encrypted.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from pathlib import Path

import pytest

from clients import messages
from gateway.protocol.constants import Command
from gateway.protocol.framing import SCRATCH_SIZE, FrameDecoder, FramingError, frame

from .conftest import PASSWORD, USER, GatewayNode, smbclient
from .rawclient import RawClient

SIZE = 20 * 1024 * 1024 + 12345  # two full 8 MiB requests and a short one


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "src.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("protection", ["off", "sign", "encrypt"])
def test_put_and_get_8mib_requests(
    protection: str, source: Path, module_gateway: GatewayNode, tmp_path: Path
) -> None:
    name = f"big-{protection}.bin"
    back = tmp_path / "back.bin"
    opt = f"--client-protection={protection}"
    put = smbclient(module_gateway, f"put {source} {name}", opt)
    assert put.returncode == 0, put.stdout + put.stderr
    assert _md5(module_gateway.share_dir / name) == _md5(source)
    get = smbclient(module_gateway, f"get {name} {back}", opt)
    assert get.returncode == 0, get.stdout + get.stderr
    assert back.stat().st_size == SIZE
    assert _md5(back) == _md5(source)


def test_read_past_the_end_returns_the_tail(
    source: Path, module_gateway: GatewayNode, tmp_path: Path
) -> None:
    # smbclient's "get" of a file shorter than its request sizes: each READ
    # asks 8 MiB, the last one gets what is left (the buffer is cut to it).
    tail = tmp_path / "tail.bin"
    tail.write_bytes(source.read_bytes()[: 3 * 1024 * 1024 + 7])
    assert smbclient(module_gateway, f"put {tail} tail.bin").returncode == 0
    got = tmp_path / "got.bin"
    res = smbclient(module_gateway, f"get tail.bin {got}", "--client-protection=sign")
    assert res.returncode == 0, res.stdout + res.stderr
    assert got.read_bytes() == tail.read_bytes()


def test_short_read_sends_only_what_was_read(module_gateway: GatewayNode) -> None:
    (module_gateway.share_dir / "short.bin").write_bytes(b"0123456789")
    client = RawClient(module_gateway.host, module_gateway.port)
    try:
        client.login(USER, PASSWORD, module_gateway.share, module_gateway.host)
        body = messages.create_request("short.bin", access=0x00120089, share=7, disposition=1)
        assert client.request(Command.CREATE, body).status == 0
        fid = messages.parse_create_response(client.last_body).file_id
        # 64 KiB asked at offset 4: the reply holds the 6 bytes left, no more.
        reply = client.request(Command.READ, messages.read_request(fid, 4, 65536))
        assert reply.status == 0
        assert messages.parse_read_response(client.last_body) == b"456789"
        assert len(client.last_body) == 16 + 6
    finally:
        client.close()


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rng.choice([1, 3, 4, 5, 4096, 65536, SCRATCH_SIZE - 1, SCRATCH_SIZE + 9, 1 << 20])
        out.append(data[pos : pos + n])
        pos += n
    return out


def test_decoder_cuts_frames_whatever_the_reads() -> None:
    rng = random.Random(15)
    sizes = [0, 1, 63, 64, 65536, SCRATCH_SIZE - 4, SCRATCH_SIZE - 3, SCRATCH_SIZE, 3 << 20]
    frames = [os.urandom(rng.choice(sizes)) for _ in range(40)]
    stream = b"".join(frame(f) for f in frames)
    for _ in range(5):
        decoder = FrameDecoder(8 * 1024 * 1024)
        got = [f for chunk in _chunks(stream, rng) for f in decoder.feed(chunk)]
        assert got == frames
        assert decoder.buffered == 0
    # As a BufferedProtocol reads: into get_buffer(), as much as the socket has.
    decoder = FrameDecoder(8 * 1024 * 1024)
    got, pos = [], 0
    while pos < len(stream):
        room = decoder.get_buffer()
        n = min(len(room), len(stream) - pos, rng.choice([7, 65536, 300000]))
        room[:n] = stream[pos : pos + n]
        pos += n
        got += decoder.buffer_updated(n)
    assert got == frames


def test_decoder_refuses_then_accepts_under_a_raised_limit() -> None:
    decoder = FrameDecoder(65536)
    big = os.urandom(70000)
    with pytest.raises(FramingError, match="exceeds the limit"):
        decoder.feed(frame(big)[: SCRATCH_SIZE // 4])
    # The frame stays where it was: a limit raised since (a session became
    # valid) lets it through, as FrameReceiver asks again.
    decoder.max_size = 8 * 1024 * 1024
    assert decoder.buffer_updated(0) == []
    assert decoder.feed(frame(big)[SCRATCH_SIZE // 4 :]) == [big]
    with pytest.raises(FramingError, match="first byte"):
        decoder.feed(struct.pack(">I", 0x01000000))
