"""One IPC$ named pipe speaking connection-oriented DCE/RPC (C706 12, MS-RPCE 2.2.2), sans-IO.

The pipe owns the PDU layer only: BIND and ALTER_CONTEXT with per-context
results, REQUEST with fragment reassembly, RESPONSE fragmented to the
negotiated max_xmit_frag, FAULT.  What a call means is the business of the
`Interface` the pipe was opened for (srvsvc, lsarpc, wkssvc): the pipe hands a
reassembled stub to the interface's handler for its opnum and sends back the
stub the handler returns.

Only NDR 2.0 is offered: a presentation context proposing only NDR64 is
refused with proposed_transfer_syntaxes_not_supported, a bind-time feature
negotiation context (MS-RPCE 3.3.1.5.3) is answered with negotiate_ack and no
feature.  DCE/RPC authentication is not offered (the SMB session already
authenticated the caller, MS-LSAD 2.1): a BIND carrying an auth verifier gets a
BIND_NAK.  An opnum the interface lacks gets a FAULT with nca_s_op_rng_error,
a stub its handler cannot decode one with rpc_x_bad_stub_data.

PDU headers are parsed with ``struct`` (strict bounds checks) and built with
impacket's ``rpcrt`` structures.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from impacket.dcerpc.v5 import rpcrt
from impacket.uuid import uuidtup_to_bin

from ..protocol.constants import NtStatusError, Status

__all__ = [
    "NCA_S_FAULT_CONTEXT_MISMATCH",
    "NCA_S_OP_RNG_ERROR",
    "NCA_S_UNK_IF",
    "NDR64_SYNTAX",
    "NDR_SYNTAX",
    "RPC_X_BAD_STUB_DATA",
    "DcerpcPipe",
    "Interface",
    "RpcFault",
    "level_error",
]

log = logging.getLogger("smbgw.rpc")

NDR_SYNTAX = uuidtup_to_bin(("8a885d04-1ceb-11c9-9fe8-08002b104860", "2.0"))
NDR64_SYNTAX = uuidtup_to_bin(("71710533-beba-4937-8319-b5dbef9ccc36", "1.0"))
_BTFN_PREFIX = uuidtup_to_bin(("6cb71c2c-9812-4540-0000-000000000000", "1.0"))[:8]
_NO_SYNTAX = bytes(20)

# FAULT statuses (MS-RPCE 2.2.2.11, C706 appendix E)
NCA_S_OP_RNG_ERROR = 0x1C010002
NCA_S_UNK_IF = 0x1C010003
NCA_S_PROTO_ERROR = 0x1C01000B
NCA_S_FAULT_UNSPEC = 0x1C000012
NCA_S_FAULT_CONTEXT_MISMATCH = 0x1C00001A
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


class Interface(Protocol):
    """An RPC interface a pipe serves: its abstract syntax and a handler per opnum.

    A handler takes the request stub (NDR) and returns the response stub; it
    may raise anything on a stub it cannot decode (the caller gets a FAULT).
    """

    @property
    def name(self) -> str: ...

    @property
    def syntax(self) -> bytes:
        """The abstract syntax: UUID and version, 20 bytes (``uuidtup_to_bin``)."""
        ...

    @property
    def ops(self) -> Mapping[int, Callable[[bytes], bytes]]: ...


def level_error(level: int, arms: Collection[int], error: int) -> bytes:
    """The response stub of a ``GetInfo(Level)`` call that failed: its switched
    union with a NULL arm (no arm at all for a level the union has no case for,
    as NDR encodes an empty default), then the Win32 ``error``."""
    if level in arms:
        return struct.pack("<III", level, 0, error)
    return struct.pack("<II", level, error)


class RpcFault(Exception):
    """Raised by an opnum handler: the call is answered with a FAULT of this status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"fault 0x{status:08x}")
        self.status = status


class _ProtocolError(Exception):
    pass


class DcerpcPipe:
    """One open of a named pipe: write() request PDUs, read() response PDUs.

    ``endpoint`` is the pipe name the BIND_ACK gives as its secondary address
    (``\\PIPE\\lsass`` for both lsarpc and lsass, as Windows and smbd answer).
    """

    def __init__(self, interface: Interface, endpoint: str) -> None:
        self.interface = interface
        self._secondary_address = endpoint.encode("ascii") + b"\x00"
        self._in = bytearray()
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._broken = False
        self._assoc_group = 0
        self._contexts: set[int] = set()
        self._max_xmit = _SERVER_MAX_FRAG
        self._call: tuple[int, int, int] | None = None  # call_id, ctx_id, opnum
        self._stub = bytearray()

    # -- the byte interface --------------------------------------------------

    def write(self, data: bytes) -> None:
        """Feed bytes the client wrote; complete PDUs are answered at once."""
        name = self.interface.name
        if self._broken:
            raise NtStatusError(Status.PIPE_BROKEN, f"{name} pipe broken by a protocol error")
        if self._out_bytes > _MAX_PENDING:
            raise NtStatusError(Status.INSUFFICIENT_RESOURCES, f"{name} output not being read")
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
            log.info("%s: %s; pipe broken", name, e)
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
            sec_addr = self._secondary_address
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
            r["Result"], r["Reason"] = _NEGOTIATE_ACK, 0
        elif not self._abstract_ok(abstract):
            r["Reason"] = _ABSTRACT_SYNTAX_NOT_SUPPORTED
        elif NDR_SYNTAX in syntaxes:
            r["Result"], r["Reason"], r["TransferSyntax"] = _ACCEPTANCE, _REASON_NONE, NDR_SYNTAX
            self._contexts.add(ctx_id)
        data: bytes = r.getData()
        return data

    def _abstract_ok(self, abstract: bytes) -> bool:
        syntax = self.interface.syntax
        major, minor = struct.unpack_from("<HH", abstract, 16)
        want_major, want_minor = struct.unpack_from("<HH", syntax, 16)
        return abstract[:16] == syntax[:16] and major == want_major and minor <= want_minor

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
        ops = self.interface.ops
        if auth_len:
            self._fault(call_id, ctx_id, NCA_S_PROTO_ERROR)
        elif ctx_id not in self._contexts:
            self._fault(call_id, ctx_id, NCA_S_UNK_IF)
        elif opnum not in ops:
            self._fault(call_id, ctx_id, NCA_S_OP_RNG_ERROR)
        else:
            try:
                out = ops[opnum](data)
            except RpcFault as e:
                self._fault(call_id, ctx_id, e.status)
                return
            except Exception as e:  # impacket raises anything on a malformed stub
                log.info("%s: opnum %d: undecodable request: %r", self.interface.name, opnum, e)
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
