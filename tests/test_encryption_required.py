"""Encryption that a share or the node demands is enforced (issue 16, finding 3).

A share with ``encrypt = true`` takes no plaintext request, signed or not
(MS-SMB2 3.3.5.2.11), and a connection that cannot encrypt (SMB 2.x, or 3.x
without a common cipher) gets no tree connect to it (3.3.5.7). With
``encrypt_required`` a connection that cannot encrypt gets no session at all,
and nor does a guest (3.3.5.5). Checked with smbclient and with the project's
own client, which can send what smbclient never would.

smbd 4.17 on this machine answers each probe alike (share ``smb encrypt =
required``, or ``server smb encrypt = required`` for the node): ACCESS_DENIED
to a tree connect over 2.1 or over 3.0.2 without the ENCRYPTION capability;
a 3.1.1 tree connect that could encrypt is granted with ENCRYPT_DATA, and a
signed but plaintext CREATE after it is ACCESS_DENIED; a 2.1 session setup
is ACCESS_DENIED when the node requires encryption.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import messages
from clients.smb2client import SMB2Client, SmbError
from gateway.protocol.constants import Command, CreateDisposition, Dialect, ShareFlags, Status

from .conftest import PASSWORD, USER, GatewayNode, free_port, smbclient, start_gateway, write_users


def _node(workdir: Path, *, encrypt_required: bool) -> GatewayNode:
    workdir.mkdir(parents=True, exist_ok=True)
    plain, secret = workdir / "plain", workdir / "secret"
    plain.mkdir()
    secret.mkdir()
    (secret / "inside.txt").write_text("only over encryption")
    users = write_users(workdir / "users")
    port = free_port()
    conf = workdir / "gw.toml"
    conf.write_text(
        f'listen = "127.0.0.1:{port}"\nusers = "{users}"\n'
        f"encrypt_required = {'true' if encrypt_required else 'false'}\n"
        f'[[shares]]\nname = "share"\npath = "{plain}"\n'
        f'[[shares]]\nname = "enc"\npath = "{secret}"\nencrypt = true\n'
    )
    return start_gateway(
        workdir / "gw", port=port, extra=["--config", str(conf)], share_dir=plain, flags=False
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    gw = _node(tmp_path_factory.mktemp("enc"), encrypt_required=False)
    yield gw
    assert gw.stop() == 0
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


def _enc(node: GatewayNode) -> GatewayNode:
    return GatewayNode(node.host, node.port, node.share_dir, node.users_file, node.log_path,
                       node.proc, share="enc")  # fmt: skip


def test_smbclient_reads_the_encrypted_share_only_over_smb3(node: GatewayNode) -> None:
    ok = smbclient(_enc(node), "get inside.txt -", "-m", "SMB3_11")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "only over encryption" in ok.stdout
    refused = smbclient(_enc(node), "ls", "-m", "SMB2_10")
    assert refused.returncode != 0
    assert "NT_STATUS_ACCESS_DENIED" in refused.stdout + refused.stderr
    plain = smbclient(node, "ls", "-m", "SMB2_10")  # the other share stays open to 2.1
    assert plain.returncode == 0, plain.stdout + plain.stderr


async def _tree_connect(client: SMB2Client, node: GatewayNode) -> tuple[int, int, int]:
    """(status, tree id, share flags) of a TREE_CONNECT to ``enc``, signed as 3.1.1 wants."""
    assert client.channel is not None
    resp = await client.transport.request(
        Command.TREE_CONNECT, messages.tree_connect_request(f"\\\\{node.host}\\enc"),
        session=client.channel, sign=True, expect=(Status.SUCCESS, Status.ACCESS_DENIED),
    )  # fmt: skip
    if resp.status != Status.SUCCESS:
        return resp.status, 0, 0
    info = messages.parse_tree_connect_response(resp.body)
    return resp.status, resp.header.tree_id, info.share_flags


@pytest.mark.parametrize("dialect", [Dialect.SMB2_1, Dialect.SMB3_0_2])
def test_no_tree_connect_without_a_cipher(node: GatewayNode, dialect: int) -> None:
    async def run() -> int:
        # 3.0.2 without the ENCRYPTION capability has no cipher, like 2.1.
        client = await SMB2Client.connect(
            node.host, node.port, user=USER, password=PASSWORD, dialects=(dialect,)
        )
        status = (await _tree_connect(client, node))[0]
        await client.close()
        return status

    assert asyncio.run(run()) == Status.ACCESS_DENIED


def test_signed_but_unencrypted_requests_are_refused(node: GatewayNode) -> None:
    async def run() -> tuple[int, int, int]:
        client = await SMB2Client.connect(
            node.host, node.port, user=USER, password=PASSWORD, dialects=(Dialect.SMB3_1_1,),
            require_signing=True,
        )  # fmt: skip
        status, tree_id, flags = await _tree_connect(client, node)
        assert status == Status.SUCCESS and flags & ShareFlags.ENCRYPT_DATA
        assert client.channel is not None and client.channel.encryptor is None
        body = messages.create_request(
            "written-in-clear.txt", access=0x0012019F, share=7,
            disposition=CreateDisposition.CREATE,
        )  # fmt: skip
        plain = await client.transport.request(
            Command.CREATE, body, session=client.channel, tree_id=tree_id,
            expect=(Status.SUCCESS, Status.ACCESS_DENIED),
        )  # fmt: skip
        await client.close()
        encrypted = await SMB2Client.connect(
            node.host, node.port, user=USER, password=PASSWORD, dialects=(Dialect.SMB3_1_1,),
            encrypt=True,
        )  # fmt: skip
        tree = await encrypted.tree_connect("enc")
        f = await tree.create("written-encrypted.txt", disposition=CreateDisposition.CREATE)
        await f.close()
        await encrypted.close()
        return plain.status, status, flags

    plain_status, _, _ = asyncio.run(run())
    assert plain_status == Status.ACCESS_DENIED
    secret = Path(node.log_path).parent.parent / "secret"
    assert not (secret / "written-in-clear.txt").exists()
    assert (secret / "written-encrypted.txt").exists()


def test_encrypt_required_refuses_sessions_that_cannot_encrypt(tmp_path: Path) -> None:
    gw = _node(tmp_path, encrypt_required=True)
    try:
        async def run() -> tuple[int, bool]:
            try:
                old = await SMB2Client.connect(gw.host, gw.port, user=USER, password=PASSWORD,
                                               dialects=(Dialect.SMB2_1,))  # fmt: skip
                await old.close()
                refused = 0
            except SmbError as e:
                refused = e.status
            # A 3.1.1 client is told to encrypt (SESSION_FLAG_ENCRYPT_DATA) and does.
            new = await SMB2Client.connect(gw.host, gw.port, user=USER, password=PASSWORD,
                                           dialects=(Dialect.SMB3_1_1,))  # fmt: skip
            tree = await new.tree_connect("share")
            await (await tree.create("x.txt")).close()
            encrypting = new.encrypt
            await new.close()
            return refused, encrypting

        refused, encrypting = asyncio.run(run())
        assert refused == Status.ACCESS_DENIED
        assert encrypting
        old_smbclient = smbclient(gw, "ls", "-m", "SMB2_10")
        assert "NT_STATUS_ACCESS_DENIED" in old_smbclient.stdout + old_smbclient.stderr
        new_smbclient = smbclient(gw, "ls", "-m", "SMB3_11")
        assert new_smbclient.returncode == 0, new_smbclient.stdout + new_smbclient.stderr
    finally:
        assert gw.stop() == 0
