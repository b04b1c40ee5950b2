"""The ``srvsvc`` named pipe behind IPC$ (MS-SRVS over MS-RPCE ncacn_np), sans-IO.

Enough of the server service for ``smbclient -L``, ``net view`` and Explorer to
list shares: connection-oriented DCE/RPC (BIND / ALTER_CONTEXT with per-context
results, REQUEST with fragment reassembly, RESPONSE fragmented to the
negotiated max_xmit_frag, FAULT) and three operations:

* NetrShareEnum (opnum 15), levels 0, 1, 2, 501 and 502;
* NetrShareGetInfo (opnum 16), levels 0, 1, 2, 501, 502, 1004 and 1005;
* NetrServerGetInfo (opnum 21), levels 100, 101 and 102.

Other opnums get a FAULT with nca_s_op_rng_error.  Only NDR 2.0 is offered: a
presentation context proposing only NDR64 is refused with
proposed_transfer_syntaxes_not_supported, a bind-time feature negotiation
context is answered with negotiate_ack and no feature.  DCE/RPC authentication
is not offered (the SMB session already authenticated the caller): a BIND
carrying an auth verifier gets a BIND_NAK.

The NDR stubs are decoded and encoded with impacket's ``srvs`` structures; the
PDU headers are parsed with ``struct`` (strict bounds checks) and built with
impacket's ``rpcrt`` structures.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from impacket.dcerpc.v5 import rpcrt, srvs
from impacket.dcerpc.v5.dtypes import NULL
from impacket.uuid import uuidtup_to_bin

from ..protocol.constants import NtStatusError, Status

__all__ = ["IPC_SHARE_TYPE", "STYPE_DISKTREE", "SrvsvcPipe"]

log = logging.getLogger("smbgw.srvsvc")

STYPE_DISKTREE = 0x00000000
STYPE_IPC = 0x00000003
STYPE_SPECIAL = 0x80000000
IPC_SHARE_TYPE = STYPE_IPC | STYPE_SPECIAL

SRVSVC_SYNTAX = uuidtup_to_bin(("4B324FC8-1670-01D3-1278-5A47BF6EE188", "3.0"))
NDR_SYNTAX = uuidtup_to_bin(("8a885d04-1ceb-11c9-9fe8-08002b104860", "2.0"))
NDR64_SYNTAX = uuidtup_to_bin(("71710533-beba-4937-8319-b5dbef9ccc36", "1.0"))
_BTFN_PREFIX = uuidtup_to_bin(("6cb71c2c-9812-4540-0000-000000000000", "1.0"))[:8]
_NO_SYNTAX = bytes(20)
_SECONDARY_ADDRESS = b"\\PIPE\\srvsvc\x00"

# Win32 / NERR results carried in the stubs
ERROR_SUCCESS = 0
ERROR_INVALID_PARAMETER = 87
ERROR_INVALID_LEVEL = 124
NERR_NET_NAME_NOT_FOUND = 2310

# FAULT statuses (MS-RPCE 2.2.2.11, C706 appendix E)
NCA_S_OP_RNG_ERROR = 0x1C010002
NCA_S_UNK_IF = 0x1C010003
NCA_S_PROTO_ERROR = 0x1C01000B
NCA_S_FAULT_UNSPEC = 0x1C000012
RPC_X_BAD_STUB_DATA = 0x000006F7

# presentation context results / reasons
_ACCEPTANCE = 0
_PROVIDER_REJECTION = 2
_NEGOTIATE_ACK = 3
_REASON_NONE = 0
_ABSTRACT_SYNTAX_NOT_SUPPORTED = 1
_TRANSFER_SYNTAXES_NOT_SUPPORTED = 2
# BIND_NAK reject reasons
_NAK_NOT_SPECIFIED = 0
_NAK_AUTH_TYPE_NOT_RECOGNIZED = 8

_COMMON = struct.Struct("<BBBB4sHHI")  # rpc_vers, minor, ptype, pfc_flags, drep, frag, auth, call
_SERVER_MAX_FRAG = 4280  # what Windows and Samba use on named pipes
_MIN_FRAG = 1432  # MustRecvFragSize (C706 12.6.3.1)
_MAX_STUB = 1 << 20  # a reassembled request larger than this is a protocol error
_MAX_PENDING = 4 << 20  # unread output the client may leave behind

_SV_TYPE = 0x00000001 | 0x00000002 | 0x00000800 | 0x00001000 | 0x00008000
_PLATFORM_ID_NT = 500

Share = tuple[str, int, str]


class _ProtocolError(Exception):
    pass


class SrvsvcPipe:
    """One open of ``\\PIPE\\srvsvc``: write() request PDUs, read() response PDUs.

    `shares` are (name, type, comment) for the configured shares; IPC$ is
    listed too (added with type STYPE_IPC|STYPE_SPECIAL if absent).
    """

    def __init__(self, shares: Iterable[Share], server_name: str, comment: str = "") -> None:
        self._shares: list[Share] = [(str(n), int(t), str(c)) for n, t, c in shares]
        if not any(n.upper() == "IPC$" for n, _t, _c in self._shares):
            self._shares.append(("IPC$", IPC_SHARE_TYPE, "IPC Service"))
        self._server_name = server_name
        self._comment = comment
        self._in = bytearray()
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._broken = False
        self._assoc_group = 0
        self._contexts: set[int] = set()
        self._max_xmit = _SERVER_MAX_FRAG
        self._call: tuple[int, int, int] | None = None  # call_id, ctx_id, opnum
        self._stub = bytearray()
        self._ops: dict[int, Callable[[bytes], bytes]] = {
            15: self._share_enum,
            16: self._share_get_info,
            21: self._server_get_info,
        }

    # -- the byte interface --------------------------------------------------

    def write(self, data: bytes) -> None:
        """Feed bytes the client wrote; complete PDUs are answered at once."""
        if self._broken:
            raise NtStatusError(Status.PIPE_BROKEN, "srvsvc pipe broken by a protocol error")
        if self._out_bytes > _MAX_PENDING:
            raise NtStatusError(Status.INSUFFICIENT_RESOURCES, "srvsvc output not being read")
        self._in += data
        try:
            while len(self._in) >= _COMMON.size:
                ver, minor, _t, _f, drep, frag_len, _a, _c = _COMMON.unpack_from(self._in)
                if ver != 5 or minor > 1 or frag_len < _COMMON.size or drep[0] & 0xF0 != 0x10:
                    raise _ProtocolError("bad DCE/RPC PDU header")
                if len(self._in) < frag_len:
                    break
                pdu = bytes(self._in[:frag_len])
                del self._in[:frag_len]
                self._dispatch(pdu)
        except _ProtocolError as e:
            log.info("srvsvc: %s; pipe broken", e)
            self._broken = True
            self._in.clear()
            self._call = None
            self._stub.clear()
            raise NtStatusError(Status.INVALID_PARAMETER, str(e)) from None

    def read(self, max_len: int) -> bytes:
        """Up to max_len bytes of the next pending PDU (the rest stays for the next read)."""
        if not self._out:
            if self._broken:
                raise NtStatusError(Status.PIPE_BROKEN)
            return b""
        if max_len <= 0:
            return b""
        head = self._out[0]
        if len(head) <= max_len:
            self._out.popleft()
            self._out_bytes -= len(head)
            return head
        self._out[0] = head[max_len:]
        self._out_bytes -= max_len
        return head[:max_len]

    def pending(self) -> bool:
        """Whether response bytes are waiting to be read."""
        return bool(self._out)

    def transceive(self, data: bytes, max_out: int) -> bytes:
        """FSCTL_PIPE_TRANSCEIVE: write a request, read (up to max_out of) its answer."""
        self.write(data)
        return self.read(max_out)

    # -- PDUs -------------------------------------------------------------------

    def _emit(self, pdu: bytes) -> None:
        self._out.append(pdu)
        self._out_bytes += len(pdu)

    def _dispatch(self, pdu: bytes) -> None:
        _v, _m, ptype, flags, _d, frag_len, auth_len, call_id = _COMMON.unpack_from(pdu)
        body_end = frag_len - (auth_len + 8 if auth_len else 0)
        if body_end < _COMMON.size:
            raise _ProtocolError("auth verifier larger than the PDU")
        if ptype == rpcrt.MSRPC_BIND:
            self._bind(pdu[_COMMON.size : body_end], call_id, auth_len, alter=False)
        elif ptype == rpcrt.MSRPC_ALTERCTX:
            self._bind(pdu[_COMMON.size : body_end], call_id, auth_len, alter=True)
        elif ptype == rpcrt.MSRPC_REQUEST:
            self._request(pdu, flags, call_id, auth_len, body_end)
        elif ptype in (rpcrt.MSRPC_AUTH3, rpcrt.MSRPC_CO_CANCEL):
            pass
        elif ptype == rpcrt.MSRPC_ORPHANED:
            if self._call is not None and self._call[0] == call_id:
                self._call = None
                self._stub.clear()
        else:
            raise _ProtocolError(f"unexpected PDU type {ptype}")

    def _header(self, ptype: int, call_id: int, body: bytes) -> bytes:
        h = rpcrt.MSRPCHeader()
        h["type"] = ptype
        h["flags"] = rpcrt.PFC_FIRST_FRAG | rpcrt.PFC_LAST_FRAG
        h["call_id"] = call_id
        h["pduData"] = body
        data: bytes = h.getData()
        return data

    def _bind(self, body: bytes, call_id: int, auth_len: int, alter: bool) -> None:
        if len(body) < 12:
            raise _ProtocolError("truncated BIND")
        max_xmit, max_recv, assoc, n_ctx = struct.unpack_from("<HHIB", body)
        if not alter:
            if self._assoc_group:
                self._nak(call_id, _NAK_NOT_SPECIFIED)  # one BIND per association
                return
            if auth_len:
                self._nak(call_id, _NAK_AUTH_TYPE_NOT_RECOGNIZED)
                return
        elif not self._assoc_group:
            raise _ProtocolError("ALTER_CONTEXT before BIND")
        results = []
        pos = 12
        for _ in range(n_ctx):
            if pos + 24 > len(body):
                raise _ProtocolError("truncated presentation context")
            ctx_id, n_ts = struct.unpack_from("<HB", body, pos)
            abstract = body[pos + 4 : pos + 24]
            pos += 24
            if pos + 20 * n_ts > len(body):
                raise _ProtocolError("truncated transfer syntax list")
            syntaxes = [body[pos + 20 * i : pos + 20 * (i + 1)] for i in range(n_ts)]
            pos += 20 * n_ts
            results.append(self._context_result(ctx_id, abstract, syntaxes))
        if alter:
            sec_addr = b""
            ptype = rpcrt.MSRPC_ALTERCTX_R
        else:
            self._max_xmit = max(_MIN_FRAG, min(max_recv, _SERVER_MAX_FRAG))
            self._assoc_group = assoc or (int.from_bytes(os.urandom(4), "little") | 1)
            sec_addr = _SECONDARY_ADDRESS
            ptype = rpcrt.MSRPC_BINDACK
        recv_frag = max(_MIN_FRAG, min(max_xmit, _SERVER_MAX_FRAG))
        ack = struct.pack("<HHIH", self._max_xmit, recv_frag, self._assoc_group, len(sec_addr))
        ack += sec_addr
        ack += bytes(-(_COMMON.size + len(ack)) % 4)
        ack += struct.pack("<BBH", len(results), 0, 0) + b"".join(results)
        self._emit(self._header(ptype, call_id, ack))

    def _context_result(self, ctx_id: int, abstract: bytes, syntaxes: list[bytes]) -> bytes:
        r = rpcrt.CtxItemResult()
        r["Result"], r["Reason"], r["TransferSyntax"] = (
            _PROVIDER_REJECTION,
            _TRANSFER_SYNTAXES_NOT_SUPPORTED,
            _NO_SYNTAX,
        )
        if any(ts[:8] == _BTFN_PREFIX for ts in syntaxes):
            # Bind-time feature negotiation (MS-RPCE 3.3.1.5.3): no feature supported.
            r["Result"], r["Reason"] = _NEGOTIATE_ACK, 0
        elif not self._abstract_ok(abstract):
            r["Reason"] = _ABSTRACT_SYNTAX_NOT_SUPPORTED
        elif NDR_SYNTAX in syntaxes:
            r["Result"], r["Reason"], r["TransferSyntax"] = _ACCEPTANCE, _REASON_NONE, NDR_SYNTAX
            self._contexts.add(ctx_id)
        data: bytes = r.getData()
        return data

    @staticmethod
    def _abstract_ok(abstract: bytes) -> bool:
        major, minor = struct.unpack_from("<HH", abstract, 16)
        want_major, want_minor = struct.unpack_from("<HH", SRVSVC_SYNTAX, 16)
        return abstract[:16] == SRVSVC_SYNTAX[:16] and major == want_major and minor <= want_minor

    def _nak(self, call_id: int, reason: int) -> None:
        body = struct.pack("<HBBB", reason, 1, 5, 0)
        body += bytes(-(_COMMON.size + len(body)) % 4)
        self._emit(self._header(rpcrt.MSRPC_BINDNAK, call_id, body))

    def _request(self, pdu: bytes, flags: int, call_id: int, auth_len: int, body_end: int) -> None:
        if len(pdu) < 24:
            raise _ProtocolError("truncated REQUEST")
        _hint, ctx_id, opnum = struct.unpack_from("<IHH", pdu, 16)
        start = 24 + (16 if flags & rpcrt.PFC_OBJECT_UUID else 0)
        if body_end < start:
            raise _ProtocolError("truncated REQUEST")
        stub = pdu[start:body_end]
        if flags & rpcrt.PFC_FIRST_FRAG:
            if self._call is not None:
                raise _ProtocolError("new call while a fragmented one is incomplete")
            self._call = (call_id, ctx_id, opnum)
            self._stub = bytearray(stub)
        else:
            if self._call is None or self._call[0] != call_id:
                raise _ProtocolError("REQUEST fragment of an unknown call")
            self._stub += stub
        if len(self._stub) > _MAX_STUB:
            raise _ProtocolError("request too large")
        if not flags & rpcrt.PFC_LAST_FRAG:
            return
        call_id, ctx_id, opnum = self._call
        data = bytes(self._stub)
        self._call = None
        self._stub = bytearray()
        if auth_len:
            self._fault(call_id, ctx_id, NCA_S_PROTO_ERROR)
        elif ctx_id not in self._contexts:
            self._fault(call_id, ctx_id, NCA_S_UNK_IF)
        elif opnum not in self._ops:
            self._fault(call_id, ctx_id, NCA_S_OP_RNG_ERROR)
        else:
            try:
                out = self._ops[opnum](data)
            except Exception as e:  # impacket raises anything on a malformed stub
                log.info("srvsvc: opnum %d: undecodable request: %r", opnum, e)
                self._fault(call_id, ctx_id, RPC_X_BAD_STUB_DATA)
                return
            self._respond(call_id, ctx_id, out)

    def _respond(self, call_id: int, ctx_id: int, stub: bytes) -> None:
        chunk = (self._max_xmit - 24) & ~7
        offset = 0
        while True:
            part = stub[offset : offset + chunk]
            flags = rpcrt.PFC_FIRST_FRAG if offset == 0 else 0
            if offset + len(part) >= len(stub):
                flags |= rpcrt.PFC_LAST_FRAG
            h = rpcrt.MSRPCRespHeader()
            h["type"] = rpcrt.MSRPC_RESPONSE
            h["flags"] = flags
            h["call_id"] = call_id
            h["alloc_hint"] = len(stub) - offset
            h["ctx_id"] = ctx_id
            h["pduData"] = part
            self._emit(h.getData())
            offset += len(part)
            if flags & rpcrt.PFC_LAST_FRAG:
                return

    def _fault(self, call_id: int, ctx_id: int, status: int) -> None:
        h = rpcrt.MSRPCRespHeader()
        h["type"] = rpcrt.MSRPC_FAULT
        h["flags"] = rpcrt.PFC_FIRST_FRAG | rpcrt.PFC_LAST_FRAG | rpcrt.PFC_DID_NOT_EXECUTE
        h["call_id"] = call_id
        h["alloc_hint"] = 0
        h["ctx_id"] = ctx_id
        h["pduData"] = struct.pack("<II", status, 0)
        self._emit(h.getData())

    # -- MS-SRVS operations -----------------------------------------------------

    def _find_share(self, name: str) -> Share | None:
        key = name.rstrip("\x00").upper()
        for share in self._shares:
            if share[0].upper() == key:
                return share
        return None

    @staticmethod
    def _share_info(level: int, share: Share) -> Any:
        name, stype, comment = share
        if level == 0:
            e = srvs.SHARE_INFO_0()
            e["shi0_netname"] = name + "\x00"
        elif level in (1, 501):
            e = srvs.SHARE_INFO_1() if level == 1 else srvs.SHARE_INFO_501()
            p = f"shi{level}_"
            e[p + "netname"] = name + "\x00"
            e[p + "type"] = stype
            e[p + "remark"] = comment + "\x00"
            if level == 501:
                e["shi501_flags"] = 0  # manual caching
        elif level in (2, 502):
            e = srvs.SHARE_INFO_2() if level == 2 else srvs.SHARE_INFO_502()
            p = f"shi{level}_"
            e[p + "netname"] = name + "\x00"
            e[p + "type"] = stype
            e[p + "remark"] = comment + "\x00"
            e[p + "permissions"] = 0
            e[p + "max_uses"] = 0xFFFFFFFF
            e[p + "current_uses"] = 0
            e[p + "path"] = "\x00"
            e[p + "passwd"] = NULL
            if level == 502:
                e["shi502_reserved"] = 0
                e["shi502_security_descriptor"] = NULL
        elif level == 1004:
            e = srvs.SHARE_INFO_1004()
            e["shi1004_remark"] = comment + "\x00"
        elif level == 1005:
            e = srvs.SHARE_INFO_1005()
            e["shi1005_flags"] = 0
        else:
            return None
        return e

    def _share_enum(self, stub: bytes) -> bytes:
        req = srvs.NetrShareEnum(stub)
        level = int(req["InfoStruct"]["Level"])
        tag = int(req["InfoStruct"]["ShareInfo"]["tag"])
        resp = srvs.NetrShareEnumResponse()
        resp["InfoStruct"]["Level"] = level
        resp["InfoStruct"]["ShareInfo"]["tag"] = tag
        arm = f"Level{tag}"
        error = ERROR_SUCCESS
        if tag != level:
            error = ERROR_INVALID_PARAMETER
        elif level not in (0, 1, 2, 501, 502):
            error = ERROR_INVALID_LEVEL
        if error:
            resp["InfoStruct"]["ShareInfo"][arm] = NULL
            resp["TotalEntries"] = 0
        else:
            container = resp["InfoStruct"]["ShareInfo"][arm]
            container["EntriesRead"] = len(self._shares)
            for share in self._shares:
                container["Buffer"].append(self._share_info(level, share))
            resp["TotalEntries"] = len(self._shares)
        # All entries are always returned, so a resume handle (if asked for) is 0.
        resume_asked = req.fields["ResumeHandle"].fields["ReferentID"] != 0
        resp["ResumeHandle"] = 0 if resume_asked else NULL
        resp["ErrorCode"] = error
        data: bytes = resp.getData()
        return data

    def _share_get_info(self, stub: bytes) -> bytes:
        req = srvs.NetrShareGetInfo(stub)
        level = int(req["Level"])
        share = self._find_share(str(req["NetName"]))
        if share is None:
            return struct.pack("<III", level, 0, NERR_NET_NAME_NOT_FOUND)
        info = self._share_info(level, share)
        if info is None or level not in srvs.SHARE_INFO.union:
            return struct.pack("<III", level, 0, ERROR_INVALID_LEVEL)
        resp = srvs.NetrShareGetInfoResponse()
        resp["InfoStruct"]["tag"] = level
        resp["InfoStruct"][srvs.SHARE_INFO.union[level][0]] = info
        resp["ErrorCode"] = ERROR_SUCCESS
        data: bytes = resp.getData()
        return data

    def _server_get_info(self, stub: bytes) -> bytes:
        req = srvs.NetrServerGetInfo(stub)
        level = int(req["Level"])
        if level == 100:
            info = srvs.SERVER_INFO_100()
        elif level == 101:
            info = srvs.SERVER_INFO_101()
        elif level == 102:
            info = srvs.SERVER_INFO_102()
        else:
            return struct.pack("<III", level, 0, ERROR_INVALID_LEVEL)
        p = f"sv{level}_"
        info[p + "platform_id"] = _PLATFORM_ID_NT
        info[p + "name"] = self._server_name + "\x00"
        if level >= 101:
            info[p + "version_major"] = 6
            info[p + "version_minor"] = 1
            info[p + "type"] = _SV_TYPE
            info[p + "comment"] = self._comment + "\x00"
        if level == 102:
            info["sv102_users"] = 0xFFFFFFFF
            info["sv102_disc"] = 15
            info["sv102_hidden"] = 0
            info["sv102_announce"] = 240
            info["sv102_anndelta"] = 3000
            info["sv102_licenses"] = 0
            info["sv102_userpath"] = "C:\\\x00"
        resp = srvs.NetrServerGetInfoResponse()
        resp["InfoStruct"]["tag"] = level
        resp["InfoStruct"][f"ServerInfo{level}"] = info
        resp["ErrorCode"] = ERROR_SUCCESS
        data: bytes = resp.getData()
        return data
