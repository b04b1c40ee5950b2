"""What the RPC pipe tests share: a gateway node and Samba's smbd side by side,
Samba's rpcclient and impacket's DCE/RPC over SMB against either, and the
normalising of what legitimately differs between the two (the server's name,
its domain SID, the RIDs it gives its users, the spelling case of well-known names).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from impacket.dcerpc.v5 import rpcrt, transport

from bench.samba import Smbd
from gateway.rpc import DcerpcPipe

from .conftest import PASSWORD, USER, GatewayNode, free_port, need, start_gateway

SMBD_NAME = "SAMBAREF"  # bench.samba's netbios name
GATEWAY_NAME = "SMBGW"  # the gateway's default server_name


@dataclass
class Server:
    host: str
    port: int
    name: str
    share_dir: Path  # of its share "share"


@contextmanager
def reference_smbd(share_params: tuple[str, ...] = ()) -> Iterator[Server]:
    """Samba's smbd (bench/samba.py) on a free loopback port; ``share_params``:
    more smb.conf lines for its share."""
    need("smbd")
    if os.geteuid() != 0:
        pytest.skip("smbd needs root (it switches to the test user)")
    work = Path(tempfile.mkdtemp(prefix="smbgw-rpc-smbd-"))
    work.chmod(0o755)  # smbd serves the share as user test
    try:
        with Smbd(work / "smbd", free_port(), share_params=share_params).start() as smbd:
            host, port = smbd.endpoints[0]
            yield Server(host, port, SMBD_NAME, smbd.share)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def gateway_node(workdir: Path, toml: str = "") -> Iterator[Server]:
    """A node serving ``workdir/share`` as "share"; ``toml``: more settings, top-level
    keys first and then lines for that share's [[shares]] table, split by a line "[share]"."""
    top, _, share = toml.partition("[share]\n")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "gw.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\nusers = "{workdir / "users"}"\n{top}\n'
        f'[[shares]]\nname = "share"\npath = "{workdir / "share"}"\n{share}'
    )
    node: GatewayNode = start_gateway(workdir, port=port, flags=False,
                                      extra=["--config", str(config)])  # fmt: skip
    try:
        yield Server(node.host, node.port, GATEWAY_NAME, node.share_dir)
    finally:
        rc = node.stop()
        assert rc == 0, node.log()[-3000:]
        assert "Traceback" not in node.log(), node.log()[-3000:]


def rpcclient(server: Server, command: str) -> str:
    """Samba's rpcclient, one command; its output (stdout and stderr)."""
    done = subprocess.run(
        [need("rpcclient"), "-p", str(server.port), server.host,
         "-U", f"{USER}%{PASSWORD}", "-c", command],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout + done.stderr


_DOMAIN_SID = re.compile(r"S-1-5-21-\d+-\d+-\d+")


def normalise(text: str, server: Server) -> str:
    """The same answer from either server reads the same: the server's name as
    SERVER, its share's directory as C:\\PATH, its domain SID as DOMAIN, a
    user's RID as RID, case folded."""
    text = text.replace("C:" + str(server.share_dir).replace("/", "\\"), "C:\\PATH")
    text = text.replace(server.name, "SERVER")
    text = re.sub(r"(S-1-5-21-\d+-\d+-\d+)-(\d{4,})", r"\1-RID", text)
    text = _DOMAIN_SID.sub(lambda m: "DOMAIN" if m[0] != "S-1-5-21-1-2-3" else m[0], text)
    return text.casefold()


def error_code(call: Callable[[], object]) -> int:
    """The error a call ends with, 0 if none: a Win32/NTSTATUS result or a FAULT's status."""
    try:
        call()
    except rpcrt.DCERPCException as e:
        code = e.get_error_code()
        if code is None:  # impacket names a FAULT it knows instead of keeping its number
            code = next(k for k, v in rpcrt.rpc_status_codes.items() if v == str(e))
        return int(code)
    return 0


def dce(server: Server, pipe: str, interface: bytes) -> rpcrt.DCERPC_v5:
    """impacket's DCE/RPC client bound to ``interface`` on ``\\pipe\\<pipe>``."""
    t = transport.SMBTransport(server.host, server.port, filename="\\" + pipe,
                               username=USER, password=PASSWORD)  # fmt: skip
    t.set_dport(server.port)
    client = t.get_dce_rpc()
    client.connect()
    client.bind(interface)
    return client


class PipeTransport:
    """The slice of impacket's DCERPCTransport that DCERPC_v5 uses, over a DcerpcPipe."""

    def __init__(self, pipe: DcerpcPipe) -> None:
        self.pipe = pipe

    def connect(self) -> int:
        return 1

    def disconnect(self) -> int:
        return 1

    def send(self, data: bytes, forceWriteAndx: int = 0, forceRecv: int = 0) -> None:  # noqa: N803
        self.pipe.write(data)

    def recv(self, forceRecv: int = 0, count: int = 0) -> bytes:  # noqa: N803
        return self.pipe.read(count or 65536)
