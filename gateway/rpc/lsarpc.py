"""The lsarpc interface (MS-LSAT, the MS-LSAD policy calls it needs), sans-IO.

What Explorer's Security tab, smbcacls and rpcclient ask a file server to
turn SIDs into names and back:

* LsarOpenPolicy (6), LsarOpenPolicy2 (44), LsarOpenPolicy3 (130) and LsarClose (0)
  (MS-LSAD 3.1.4.4.1-3.1.4.4.2, 3.1.4.9.4): policy handles, one table per
  pipe; a call on a handle the pipe did not give (or closed) faults with
  nca_s_fault_context_mismatch, as an RPC runtime does for a stale context handle;
* LsarQueryInformationPolicy (7) and ...Policy2 (46) (MS-LSAD 3.1.4.4.3-4),
  the primary domain (level 3: the workgroup, no SID, as a standalone server
  answers) and the account domain (level 5 and 13: the server's name and its domain SID);
  other levels: STATUS_INVALID_INFO_CLASS;
* LsarLookupSids (15), LsarLookupSids2 (57), LsarLookupNames (14), LsarLookupNames2 (58),
  LsarLookupNames3 (68) (MS-LSAT 3.1.4.5-3.1.4.11), against ``names.Directory``: a SID
  or name not known comes back as SidTypeUnknown (a SID named by its string form,
  DomainIndex -1) with STATUS_SOME_NOT_MAPPED, or STATUS_NONE_MAPPED when nothing mapped;
* LsarLookupSids3 (76) and LsarLookupNames4 (77) are for domain controllers over
  TCP with a Netlogon secure channel (MS-LSAT 2.1, 3.2): over a named pipe they
  fault with rpc_s_access_denied, as smbd does;
* LsarGetUserName (45, MS-LSAT 3.1.4.4): the session's user and its domain.

A policy handle holds what it was opened for, bounded by what smbd grants a
user who is not an administrator (viewing and translating, ``USER_POLICY_ACCESS``):
asking for more is STATUS_ACCESS_DENIED at open, and a call the handle does
not hold the right for (POLICY_VIEW_LOCAL_INFORMATION to query,
POLICY_LOOKUP_NAMES to translate) is STATUS_ACCESS_DENIED.

NDR through impacket's ``lsat``/``lsad`` structures. Three calls are declared
here instead: LsarOpenPolicy3 is not in impacket, and impacket's LsarOpenPolicy
(SystemName is one wide character, MS-LSAD 3.1.4.4.2) and LsarGetUserName
(DomainName is a pointer to a pointer, MS-LSAT 3.1.4.4) do not decode what
Samba's rpcclient sends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from impacket.dcerpc.v5 import lsad, lsat
from impacket.dcerpc.v5.dtypes import LPWSTR, NTSTATUS, NULL, PRPC_UNICODE_STRING, ULONG, USHORT
from impacket.dcerpc.v5.ndr import NDRCALL, NDRPOINTER, NDRSTRUCT, NDRUNION
from impacket.uuid import uuidtup_to_bin

from ..protocol.constants import Status
from .dcerpc import NCA_S_FAULT_CONTEXT_MISMATCH, RpcFault
from .names import SID_TYPE_UNKNOWN, Account, Directory

__all__ = ["LSARPC_SYNTAX", "Lsarpc"]

LSARPC_SYNTAX = uuidtup_to_bin(("12345778-1234-ABCD-EF00-0123456789AB", "0.0"))

RPC_S_ACCESS_DENIED = 0x00000005  # a FAULT status (MS-RPCE 2.2.2.11)
# MS-ERREF 2.3.1, the partial and failed translations
STATUS_SOME_NOT_MAPPED = 0x00000107
STATUS_NONE_MAPPED = 0xC0000073

# Policy object rights (MS-LSAD 2.2.1.1.2) and their generic mapping
POLICY_VIEW_LOCAL_INFORMATION = 0x00000001
POLICY_VIEW_AUDIT_INFORMATION = 0x00000002
POLICY_GET_PRIVATE_INFORMATION = 0x00000004
POLICY_LOOKUP_NAMES = 0x00000800
READ_CONTROL = 0x00020000
MAXIMUM_ALLOWED = 0x02000000
_GENERIC = (  # (generic bit, what it maps to)
    (0x80000000, READ_CONTROL | POLICY_VIEW_AUDIT_INFORMATION | POLICY_GET_PRIVATE_INFORMATION),
    (0x40000000, READ_CONTROL | 0x000007F8),
    (0x20000000, READ_CONTROL | POLICY_VIEW_LOCAL_INFORMATION | POLICY_LOOKUP_NAMES),
    (0x10000000, 0x000F0FFF),
)
# What any user of this server may hold on the policy: reading and translating,
# as smbd grants a user who is not an administrator (nobody here is one).
USER_POLICY_ACCESS = (
    POLICY_VIEW_LOCAL_INFORMATION | POLICY_VIEW_AUDIT_INFORMATION
    | POLICY_GET_PRIVATE_INFORMATION | POLICY_LOOKUP_NAMES | READ_CONTROL
)  # fmt: skip

_PRIMARY_DOMAIN = 3
_ACCOUNT_DOMAIN = 5
_LOCAL_ACCOUNT_DOMAIN = 13


class LSAPR_REVISION_INFO_V1(NDRSTRUCT):  # noqa: N801 (the spec's name)
    structure = (("Revision", ULONG), ("SupportedFeatures", ULONG))


class LSAPR_REVISION_INFO(NDRUNION):  # noqa: N801
    union = {1: ("V1", LSAPR_REVISION_INFO_V1)}


class PWCHAR_T(NDRPOINTER):  # noqa: N801
    referent = (("Data", USHORT),)


class LsarOpenPolicy(NDRCALL):
    opnum = 6
    structure = (
        ("SystemName", PWCHAR_T),
        ("ObjectAttributes", lsad.LSAPR_OBJECT_ATTRIBUTES),
        ("DesiredAccess", ULONG),
    )


class PPRPC_UNICODE_STRING(NDRPOINTER):  # noqa: N801
    referent = (("Data", PRPC_UNICODE_STRING),)


class LsarGetUserName(NDRCALL):
    opnum = 45
    structure = (
        ("SystemName", LPWSTR),
        ("UserName", PRPC_UNICODE_STRING),
        ("DomainName", PPRPC_UNICODE_STRING),
    )


class LsarGetUserNameResponse(NDRCALL):
    structure = (
        ("UserName", PRPC_UNICODE_STRING),
        ("DomainName", PPRPC_UNICODE_STRING),
        ("ErrorCode", NTSTATUS),
    )


class LsarOpenPolicy3(NDRCALL):
    opnum = 130
    structure = (
        ("SystemName", LPWSTR),
        ("ObjectAttributes", lsad.LSAPR_OBJECT_ATTRIBUTES),
        ("DesiredAccess", ULONG),
        ("InVersion", ULONG),
        ("InRevisionInfo", LSAPR_REVISION_INFO),
    )


class LsarOpenPolicy3Response(NDRCALL):
    structure = (
        ("OutVersion", ULONG),
        ("OutRevisionInfo", LSAPR_REVISION_INFO),
        ("PolicyHandle", lsad.LSAPR_HANDLE),
        ("ErrorCode", NTSTATUS),
    )


def _handle(data: bytes) -> Any:
    handle = lsad.LSAPR_HANDLE()
    handle["Data"] = data
    return handle


def granted_access(desired: int) -> int | None:
    """The rights a policy handle opened for ``desired`` holds; None: refused."""
    wanted = desired & ~(MAXIMUM_ALLOWED | 0xF0000000)
    for bit, rights in _GENERIC:
        if desired & bit:
            wanted |= rights
    if wanted & ~USER_POLICY_ACCESS:
        return None
    return USER_POLICY_ACCESS if desired & MAXIMUM_ALLOWED else wanted


def _status(mapped: int, total: int) -> int:
    if mapped == total:
        return Status.SUCCESS
    return STATUS_SOME_NOT_MAPPED if mapped else STATUS_NONE_MAPPED


class _Domains:
    """ReferencedDomains: each domain once, in the order first referenced."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def index(self, account: Account) -> int:
        key = (account.domain, account.domain_sid)
        if key not in self.entries:
            self.entries.append(key)
        return self.entries.index(key)

    def fill(self, resp: Any) -> None:
        ref = resp["ReferencedDomains"]
        ref["Entries"] = len(self.entries)
        ref["MaxEntries"] = len(self.entries)
        for name, sid in self.entries:
            d = lsad.LSAPR_TRUST_INFORMATION()
            d["Name"] = name
            d["Sid"].fromCanonical(sid)
            ref["Domains"].append(d)


class Lsarpc:
    """The lsarpc interface of one pipe open, for the session that opened it."""

    name = "lsarpc"
    syntax = LSARPC_SYNTAX

    def __init__(self, directory: Directory, workgroup: str, user: Account) -> None:
        self._dir = directory
        self._workgroup = workgroup
        self._user = user
        self._handles: dict[bytes, int] = {}  # handle -> granted access
        ops: dict[int, Callable[[bytes], bytes]] = {
            0: self._close,
            6: self._open_policy,
            7: self._query_info,
            44: self._open_policy2,
            45: self._get_user_name,
            46: self._query_info2,
            76: self._lookup_sids3,
            77: self._lookup_names4,
            130: self._open_policy3,
        }
        lookups = {
            14: (lsat.LsarLookupNames, lsat.LsarLookupNamesResponse, lsat.LSA_TRANSLATED_SID),
            15: (lsat.LsarLookupSids, lsat.LsarLookupSidsResponse, lsat.LSAPR_TRANSLATED_NAME),
            57: (lsat.LsarLookupSids2, lsat.LsarLookupSids2Response,
                 lsat.LSAPR_TRANSLATED_NAME_EX),
            58: (lsat.LsarLookupNames2, lsat.LsarLookupNames2Response,
                 lsat.LSAPR_TRANSLATED_SID_EX),
            68: (lsat.LsarLookupNames3, lsat.LsarLookupNames3Response,
                 lsat.LSAPR_TRANSLATED_SID_EX2),
        }  # fmt: skip
        ops.update({n: partial(self._lookup, *c) for n, c in lookups.items()})
        self.ops: Mapping[int, Callable[[bytes], bytes]] = ops

    # -- handles --------------------------------------------------------------

    def _new_handle(self, granted: int) -> bytes:
        handle = bytes(4) + os.urandom(16)  # attributes 0, then a GUID (MS-RPCE 2.2.4.2)
        self._handles[handle] = granted
        return handle

    def _check(self, handle: bytes, needs: int = 0) -> bool:
        """Whether the handle holds ``needs``; faults for a handle this pipe never gave."""
        granted = self._handles.get(bytes(handle))
        if granted is None:
            raise RpcFault(NCA_S_FAULT_CONTEXT_MISMATCH)
        return granted & needs == needs

    def _open_policy(self, stub: bytes) -> bytes:
        req = LsarOpenPolicy(stub)
        return self._opened(int(req["DesiredAccess"]), lsad.LsarOpenPolicyResponse())

    def _open_policy2(self, stub: bytes) -> bytes:
        req = lsad.LsarOpenPolicy2(stub)
        return self._opened(int(req["DesiredAccess"]), lsad.LsarOpenPolicy2Response())

    def _opened(self, desired: int, resp: Any) -> bytes:
        granted = granted_access(desired)
        if granted is None:
            resp["PolicyHandle"] = _handle(bytes(20))
            resp["ErrorCode"] = Status.ACCESS_DENIED
        else:
            resp["PolicyHandle"] = _handle(self._new_handle(granted))
            resp["ErrorCode"] = Status.SUCCESS
        data: bytes = resp.getData()
        return data

    def _open_policy3(self, stub: bytes) -> bytes:
        req = LsarOpenPolicy3(stub)
        resp = LsarOpenPolicy3Response()
        resp["OutVersion"] = 1
        resp["OutRevisionInfo"]["tag"] = 1
        resp["OutRevisionInfo"]["V1"]["Revision"] = 1
        resp["OutRevisionInfo"]["V1"]["SupportedFeatures"] = 0  # no AES trust secrets here
        granted = granted_access(int(req["DesiredAccess"]))
        resp["PolicyHandle"] = _handle(bytes(20))
        if int(req["InVersion"]) != 1:
            resp["ErrorCode"] = Status.INVALID_PARAMETER
        elif granted is None:
            resp["ErrorCode"] = Status.ACCESS_DENIED
        else:
            resp["PolicyHandle"] = _handle(self._new_handle(granted))
            resp["ErrorCode"] = Status.SUCCESS
        data: bytes = resp.getData()
        return data

    def _close(self, stub: bytes) -> bytes:
        req = lsad.LsarClose(stub)
        self._check(req["ObjectHandle"])
        del self._handles[bytes(req["ObjectHandle"])]
        resp = lsad.LsarCloseResponse()
        resp["ObjectHandle"] = _handle(bytes(20))
        resp["ErrorCode"] = Status.SUCCESS
        data: bytes = resp.getData()
        return data

    # -- policy information -------------------------------------------------------

    def _query_info(self, stub: bytes) -> bytes:
        req = lsad.LsarQueryInformationPolicy(stub)
        return self._policy_info(req, lsad.LsarQueryInformationPolicyResponse())

    def _query_info2(self, stub: bytes) -> bytes:
        req = lsad.LsarQueryInformationPolicy2(stub)
        return self._policy_info(req, lsad.LsarQueryInformationPolicy2Response())

    def _policy_info(self, req: Any, resp: Any) -> bytes:
        allowed = self._check(req["PolicyHandle"], POLICY_VIEW_LOCAL_INFORMATION)
        level = int(req["InformationClass"])
        info = resp["PolicyInformation"]
        if level in (_PRIMARY_DOMAIN, _ACCOUNT_DOMAIN, _LOCAL_ACCOUNT_DOMAIN) and not allowed:
            resp["PolicyInformation"] = NULL
            resp["ErrorCode"] = Status.ACCESS_DENIED
            data: bytes = resp.getData()
            return data
        if level == _PRIMARY_DOMAIN:
            info["tag"] = level
            info["PolicyPrimaryDomainInfo"]["Name"] = self._workgroup
            info["PolicyPrimaryDomainInfo"]["Sid"] = NULL
        elif level in (_ACCOUNT_DOMAIN, _LOCAL_ACCOUNT_DOMAIN):
            arm = lsad.LSAPR_POLICY_INFORMATION.union[level][0]
            info["tag"] = level
            info[arm]["DomainName"] = self._dir.domain
            info[arm]["DomainSid"].fromCanonical(self._dir.domain_sid)
        else:
            resp["PolicyInformation"] = NULL
            resp["ErrorCode"] = Status.INVALID_INFO_CLASS
            data = resp.getData()
            return data
        resp["ErrorCode"] = Status.SUCCESS
        data = resp.getData()
        return data

    # -- SIDs to names -------------------------------------------------------------

    def _lookup(self, call: type[Any], response: type[Any], entry: type[Any], stub: bytes
                ) -> bytes:  # fmt: skip
        """LsarLookupSids/2 and LsarLookupNames/2/3: ``call`` decodes the request,
        ``entry`` is the translated name or SID the version answers with."""
        req = call(stub)
        resp = response()
        by_sid = "SidEnumBuffer" in req.fields
        if not self._check(req["PolicyHandle"], POLICY_LOOKUP_NAMES):
            out = ("TranslatedNames", "Names") if by_sid else ("TranslatedSids", "Sids")
            return self._denied(resp, *out)
        if by_sid:
            return self._names_of(req, resp, entry)
        return self._sids_of(req, resp, entry, full_sid=entry is lsat.LSAPR_TRANSLATED_SID_EX2)

    def _lookup_sids3(self, stub: bytes) -> bytes:
        lsat.LsarLookupSids3(stub)
        raise RpcFault(RPC_S_ACCESS_DENIED)

    def _names_of(self, req: Any, resp: Any, entry_type: type[Any]) -> bytes:
        infos = req["SidEnumBuffer"]["SidInfo"]
        sids = [] if infos in (NULL, None) else [i["Sid"].formatCanonical() for i in infos]
        domains = _Domains()
        mapped = 0
        names = resp["TranslatedNames"]
        names["Entries"] = len(sids)
        for sid in sids:
            e = entry_type()
            account = self._dir.by_sid(sid)
            if account is None:
                e["Use"], e["Name"], e["DomainIndex"] = SID_TYPE_UNKNOWN, sid, -1
            else:
                mapped += 1
                e["Use"], e["Name"] = account.use, account.name
                e["DomainIndex"] = domains.index(account)
            if "Flags" in e.fields:
                e["Flags"] = 0
            names["Names"].append(e)
        domains.fill(resp)
        resp["MappedCount"] = mapped
        resp["ErrorCode"] = _status(mapped, len(sids))
        data: bytes = resp.getData()
        return data

    # -- names to SIDs -------------------------------------------------------------

    def _lookup_names4(self, stub: bytes) -> bytes:
        lsat.LsarLookupNames4(stub)
        raise RpcFault(RPC_S_ACCESS_DENIED)

    def _sids_of(self, req: Any, resp: Any, entry_type: type[Any], full_sid: bool = False
                 ) -> bytes:  # fmt: skip
        names = [str(n["Data"]) for n in req["Names"]]
        domains = _Domains()
        mapped = 0
        sids = resp["TranslatedSids"]
        sids["Entries"] = len(names)
        for name in names:
            e = entry_type()
            account = self._dir.by_name(name)
            e["Use"] = SID_TYPE_UNKNOWN if account is None else account.use
            e["DomainIndex"] = -1 if account is None else domains.index(account)
            if full_sid:
                if account is None:
                    e["Sid"] = NULL
                else:
                    e["Sid"].fromCanonical(account.sid)
            else:
                e["RelativeId"] = 0 if account is None else account.rid
            if "Flags" in e.fields:
                e["Flags"] = 0
            mapped += account is not None
            sids["Sids"].append(e)
        domains.fill(resp)
        resp["MappedCount"] = mapped
        resp["ErrorCode"] = _status(mapped, len(names))
        data: bytes = resp.getData()
        return data

    @staticmethod
    def _denied(resp: Any, field: str, array: str) -> bytes:
        resp["ReferencedDomains"] = NULL
        resp[field]["Entries"] = 0
        resp[field][array] = NULL
        resp["MappedCount"] = 0
        resp["ErrorCode"] = Status.ACCESS_DENIED
        data: bytes = resp.getData()
        return data

    # -- who am I -----------------------------------------------------------------------

    def _get_user_name(self, stub: bytes) -> bytes:
        req = LsarGetUserName(stub)
        resp = LsarGetUserNameResponse()
        resp["UserName"] = self._user.name
        # DomainName is [in, out, unique]: answered only when the caller asked for it.
        if req.fields["DomainName"].fields["ReferentID"] != 0:
            resp["DomainName"] = self._user.domain
        else:
            resp["DomainName"] = NULL
        resp["ErrorCode"] = Status.SUCCESS
        data: bytes = resp.getData()
        return data
