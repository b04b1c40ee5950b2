"""TREE_CONNECT and TREE_DISCONNECT (MS-SMB2 2.2.9-2.2.12, 3.3.5.7-3.3.5.8)."""

from __future__ import annotations

import struct

from oplock_bus.api import LockBus
from oplock_bus.memory import InProcessBus

from ...config import ShareConfig
from ...protocol.constants import (
    FILE_ALL_ACCESS,
    FILE_GENERIC_EXECUTE,
    FILE_GENERIC_READ,
    Dialect,
    NtStatusError,
    ShareCapabilities,
    ShareFlags,
    ShareType,
    Status,
)
from ...protocol.wire import check_size
from .. import opens
from ..context import Disconnect, Reply, RequestContext
from ..state import TreeConnect

_REQ = struct.Struct("<HHHH")
_RESP = struct.Struct("<HBBIII")
_EXTENSION_PRESENT = 0x0004
IPC_SHARE = ShareConfig(name="IPC$", path="", comment="IPC Service", guest_ok=True)


async def handle_tree_connect(ctx: RequestContext) -> Reply:
    body = ctx.body
    check_size(body, 8, 9)
    session = ctx.session
    if session is None:
        raise NtStatusError(Status.USER_SESSION_DELETED)
    if (
        ctx.conn.codec.dialect == Dialect.SMB3_1_1
        and not (ctx.header.is_signed or ctx.encrypted)
        and not (session.is_guest or session.is_anonymous)
    ):
        # MS-SMB2 3.3.5.7: in 3.1.1 the signature of TREE_CONNECT is what
        # protects its answer (ENCRYPT_DATA among the share flags) on the way.
        raise Disconnect("unsigned 3.1.1 TREE_CONNECT")
    _s, flags, path_off, path_len = _REQ.unpack_from(body)
    start = path_off - 64
    if ctx.conn.codec.dialect == Dialect.SMB3_1_1 and flags & _EXTENSION_PRESENT:
        # The extension moves the path: PathOffset is relative to the extension.
        # The path then follows a 16-byte TREE_CONNECT_Request_Extension header.
        start += 16
    if start < 8 or start + path_len > len(body) or path_len % 2:
        raise NtStatusError(Status.INVALID_PARAMETER, "path outside the message")
    path = body[start : start + path_len].decode("utf-16-le", "replace")
    name = path.rstrip("\\").rsplit("\\", 1)[-1]
    node = ctx.node
    if name.upper() == "IPC$":
        share, fs = IPC_SHARE, None
        share_type = ShareType.PIPE
        access = FILE_ALL_ACCESS
    else:
        cfg = node.config.share(name)
        if cfg is None:
            raise NtStatusError(Status.BAD_NETWORK_NAME)
        if (session.is_guest or session.is_anonymous) and not cfg.guest_ok:
            raise NtStatusError(Status.ACCESS_DENIED)
        if cfg.encrypt and not _can_encrypt(ctx):
            # MS-SMB2 3.3.5.7, RejectUnencryptedAccess: no plaintext access to
            # a share that demands encryption (2.x, no cipher, guest).
            raise NtStatusError(Status.ACCESS_DENIED, "the share demands encryption")
        share, fs = cfg, node.share_fs[cfg.name.lower()]
        share_type = ShareType.DISK
        access = (FILE_GENERIC_READ | FILE_GENERIC_EXECUTE) if cfg.read_only else FILE_ALL_ACCESS
    tree = TreeConnect(
        tree_id=session.next_tree_id(),
        session=session,
        share=share,
        fs=fs,
        maximal_access=access,
        encrypt_data=share.encrypt,
    )
    session.trees[tree.tree_id] = tree
    ctx.tree = tree
    ctx.header.tree_id = tree.tree_id
    share_flags = ShareFlags.MANUAL_CACHING
    if tree.encrypt_data:
        share_flags |= ShareFlags.ENCRYPT_DATA
    caps = share_capabilities(share, ctx.conn.codec.dialect, on_shared_bus(node.bus))
    return Reply(Status.SUCCESS, _RESP.pack(16, share_type, 0, share_flags, caps, access))


def share_capabilities(share: ShareConfig, dialect: int, shared_bus: bool) -> int:
    """TREE_CONNECT's Capabilities (MS-SMB2 2.2.10): CA is a 3.x notion."""
    if not share.continuous_availability or dialect < Dialect.SMB3_0:
        return 0
    caps = ShareCapabilities.CONTINUOUS_AVAILABILITY
    if shared_bus:
        # Every node of the cluster serves the share at once (scale-out), so a
        # client may reconnect its handles through any of them.
        caps |= ShareCapabilities.SCALEOUT | ShareCapabilities.CLUSTER
    return int(caps)


def on_shared_bus(bus: LockBus) -> bool:
    """Whether other nodes see this node's opens: the embedded bus lives and
    dies with this process, so no other node could take a handle over."""
    return not isinstance(bus, InProcessBus)


def _can_encrypt(ctx: RequestContext) -> bool:
    session = ctx.session
    return (
        ctx.conn.codec.dialect >= Dialect.SMB3_0
        and bool(ctx.conn.codec.cipher)
        and session is not None
        and bool(session.encryption_key)
    )


async def handle_tree_disconnect(ctx: RequestContext) -> Reply:
    check_size(ctx.body, 4, 4)
    tree = ctx.require_tree()
    await opens.disconnect_tree(ctx.node, ctx.conn, tree)
    return Reply(Status.SUCCESS, struct.pack("<HH", 4, 0))
