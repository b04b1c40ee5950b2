"""The wkssvc pipe: NetrWkstaGetInfo levels 100, 101 and 102 (MS-WKST 3.2.4.1).

A gateway node and Samba's smbd answer the same calls from impacket's wkst
client and Samba's rpcclient; the answers, normalised for the server's name,
must match.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from impacket.dcerpc.v5 import wkst

from .rpc_compare import Server, dce, error_code, gateway_node, normalise, reference_smbd, rpcclient


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with reference_smbd() as smbd, gateway_node(tmp_path_factory.mktemp("gw")) as gw:
        yield gw, smbd


def _info(server: Server, level: int) -> dict[str, Any]:
    client = dce(server, "wkssvc", wkst.MSRPC_UUID_WKST)
    try:
        info = wkst.hNetrWkstaGetInfo(client, level)["WkstaInfo"][f"WkstaInfo{level}"]
        values = {k: info[k] for k in info.fields}
        return {k: normalise(v, server) if isinstance(v, str) else v for k, v in values.items()}
    finally:
        client.disconnect()


@pytest.mark.parametrize("level", [100, 101])
def test_wksta_get_info_as_smbd(servers: tuple[Server, Server], level: int) -> None:
    gw, smbd = servers
    ours = _info(gw, level)
    assert ours == _info(smbd, level)
    assert ours[f"wki{level}_computername"] == "server\x00"
    assert ours[f"wki{level}_langroup"] == "workgroup\x00"
    assert ours[f"wki{level}_platform_id"] == 500


def test_level_102_and_unknown_levels_as_smbd(servers: tuple[Server, Server]) -> None:
    """Level 102 (logged-on users) is for administrators, and nobody here is one."""
    codes = []
    for server in servers:
        client = dce(server, "wkssvc", wkst.MSRPC_UUID_WKST)
        codes.append([error_code(lambda c=client, lv=level: wkst.hNetrWkstaGetInfo(c, lv))
                      for level in (102, 103, 502)])  # fmt: skip
        client.disconnect()
    assert codes[0] == codes[1] == [5, 124, 124]  # ERROR_ACCESS_DENIED, ERROR_INVALID_LEVEL


@pytest.mark.parametrize("level", ["100", "101", "102"])
def test_rpcclient_wkstagetinfo_as_smbd(servers: tuple[Server, Server], level: str) -> None:
    gw, smbd = servers
    command = f"wkssvc_wkstagetinfo {level}"
    ours = normalise(rpcclient(gw, command), gw)
    assert ours == normalise(rpcclient(smbd, command), smbd)
    assert ("access_denied" in ours) == (level == "102"), ours
