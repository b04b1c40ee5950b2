"""pysmb against a node: what its users do, start to end.

pysmb opens with an SMB1 NEGOTIATE offering "NT LM 0.12" and "SMB 2.002" but
not "SMB 2.???", so it runs on 2.0.2 negotiated in that one exchange
(MS-SMB2 3.3.5.3.2); tests/test_smb1_negotiate.py has the wire detail.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from smb.SMBConnection import SMBConnection

from .conftest import PASSWORD, USER, GatewayNode, start_gateway


def _connect(node: GatewayNode, password: str = PASSWORD) -> tuple[SMBConnection, bool]:
    conn = SMBConnection(USER, password, "pysmb-test", "node", use_ntlm_v2=True, is_direct_tcp=True)
    return conn, bool(conn.connect(node.host, node.port, timeout=10))


@pytest.fixture(scope="module", params=["plain", "signing-required"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[GatewayNode]:  # fmt: skip
    extra = ["--signing-required"] if request.param == "signing-required" else []
    gw = start_gateway(tmp_path_factory.mktemp("gw"), extra=extra)
    yield gw
    rc = gw.stop()
    assert rc == 0, gw.log()[-4000:]
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


@pytest.fixture
def conn(node: GatewayNode) -> Iterator[SMBConnection]:
    c, ok = _connect(node)
    assert ok, f"pysmb could not log on\n{node.log()[-2000:]}"
    yield c
    c.close()


def test_connects_over_smb2_and_lists_shares(conn: SMBConnection) -> None:
    assert conn.isUsingSMB2
    names = {s.name for s in conn.listShares(timeout=10)}
    assert {"share", "IPC$"} <= names


def test_upload_list_download_delete(conn: SMBConnection, node: GatewayNode) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: several 64 KiB 2.0.2 writes and reads
    assert conn.storeFile("share", "/up.bin", io.BytesIO(data), timeout=20) == len(data)
    on_disk = node.share_dir / "up.bin"
    assert on_disk.read_bytes() == data
    listed = {f.filename: f for f in conn.listPath("share", "/", timeout=10)}
    assert listed["up.bin"].file_size == len(data)
    out = io.BytesIO()
    _attrs, size = conn.retrieveFile("share", "/up.bin", out, timeout=20)
    assert size == len(data) and out.getvalue() == data
    conn.deleteFiles("share", "/up.bin", timeout=10)
    assert not on_disk.exists()
    assert "up.bin" not in {f.filename for f in conn.listPath("share", "/", timeout=10)}


def test_directories_and_rename(conn: SMBConnection, node: GatewayNode) -> None:
    conn.createDirectory("share", "/dir", timeout=10)
    conn.storeFile("share", "/dir/a.txt", io.BytesIO(b"pysmb"), timeout=10)
    conn.rename("share", "/dir/a.txt", "/dir/b.txt", timeout=10)
    assert sorted(p.name for p in Path(node.share_dir, "dir").iterdir()) == ["b.txt"]
    conn.deleteFiles("share", "/dir/b.txt", timeout=10)
    conn.deleteDirectory("share", "/dir", timeout=10)
    assert not (node.share_dir / "dir").exists()


def test_wrong_password_is_refused(node: GatewayNode) -> None:
    c, ok = _connect(node, password="not-the-password")
    c.close()
    assert not ok
