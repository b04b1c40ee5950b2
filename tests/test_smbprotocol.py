"""smbprotocol's high-level smbclient API against a node, SMB 3.1.1 signed and encrypted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import smbclient
from smbprotocol.connection import Dialects

from .conftest import PASSWORD, USER, GatewayNode


@pytest.fixture(params=["signed", "encrypted"])
def smb(request: pytest.FixtureRequest, module_gateway: GatewayNode) -> Iterator[dict[str, Any]]:
    cache: dict[str, Any] = {}
    encrypt = request.param == "encrypted"
    smbclient.register_session(
        module_gateway.host,
        username=USER,
        password=PASSWORD,
        port=module_gateway.port,
        encrypt=encrypt,
        require_signing=True,
        connection_cache=cache,
        auth_protocol="ntlm",
    )
    kw = {"port": module_gateway.port, "connection_cache": cache}
    yield {"kw": kw, "cache": cache, "mode": request.param}
    smbclient.reset_connection_cache(connection_cache=cache)


def test_round_trip(smb: dict[str, Any], module_gateway: GatewayNode) -> None:
    kw = smb["kw"]
    conn = next(iter(smb["cache"].values()))
    assert conn.dialect == Dialects.SMB_3_1_1
    base = rf"\\{module_gateway.host}\share\sp_{smb['mode']}"
    smbclient.mkdir(base, **kw)
    payload = os.urandom(1_500_000)
    with smbclient.open_file(rf"{base}\a.bin", mode="wb", **kw) as f:
        f.write(payload)
    with smbclient.open_file(rf"{base}\a.bin", mode="rb", **kw) as f:
        assert f.read() == payload
    assert smbclient.listdir(base, **kw) == ["a.bin"]
    st = smbclient.stat(rf"{base}\a.bin", **kw)
    assert st.st_size == len(payload)
    smbclient.rename(rf"{base}\a.bin", rf"{base}\b.bin", **kw)
    assert smbclient.listdir(base, **kw) == ["b.bin"]
    assert (module_gateway.share_dir / f"sp_{smb['mode']}" / "b.bin").read_bytes() == payload
    smbclient.remove(rf"{base}\b.bin", **kw)
    assert smbclient.listdir(base, **kw) == []
    smbclient.rmdir(base, **kw)
    assert not (module_gateway.share_dir / f"sp_{smb['mode']}").exists()


def test_missing_file_raises(smb: dict[str, Any], module_gateway: GatewayNode) -> None:
    from smbprotocol.exceptions import SMBOSError

    with pytest.raises(SMBOSError) as err:
        smbclient.stat(rf"\\{module_gateway.host}\share\does-not-exist", **smb["kw"])
    assert err.value.errno == 2  # ENOENT, mapped from STATUS_OBJECT_NAME_NOT_FOUND
