"""The lsarpc pipe: SIDs to names and back, policy handles, the session's user.

A gateway node and Samba's smbd run side by side; Samba's rpcclient and
impacket's lsat/lsad clients ask both the same and the answers, normalised for
the server's name, domain SID and user RIDs (tests/rpc_compare.py), must match.
smbcacls (which has no port option) reads a file's descriptor from a node
listening on port 445 of a loopback address of its own and must show names.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from impacket.dcerpc.v5 import lsad, lsat, rpcrt
from impacket.dcerpc.v5.dtypes import NULL

from gateway.fs import acl
from gateway.rpc import Caller, ServerView, open_pipe
from gateway.rpc.lsarpc import LsarGetUserName, LsarOpenPolicy3, LsarOpenPolicy3Response

from .conftest import PASSWORD, USER, need, start_gateway
from .rpc_compare import (
    GATEWAY_NAME,
    PipeTransport,
    Server,
    dce,
    gateway_node,
    normalise,
    reference_smbd,
    rpcclient,
)

WKSTA = lsat.LSAP_LOOKUP_LEVEL.LsapLookupWksta
MAXIMUM_ALLOWED = 0x02000000
STATUS_SOME_NOT_MAPPED = 0x107
STATUS_NONE_MAPPED = 0xC0000073
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_INVALID_INFO_CLASS = 0xC0000003

WELL_KNOWN = ["S-1-1-0", "S-1-5-32-544", "S-1-5-32-545", "S-1-5-32-546", "S-1-5-11",
              "S-1-3-0", "S-1-3-1", "S-1-5-18", "S-1-5-2", "S-1-5-7"]  # fmt: skip
UNKNOWN_SID = "S-1-5-21-1-2-3-4"
NAMES = ["test", "Everyone", "BUILTIN\\Administrators", "Authenticated Users", "SYSTEM",
         "CREATOR OWNER", "NT AUTHORITY\\SYSTEM", "Users", "None", "\\Everyone",
         "test@SERVER"]  # fmt: skip


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with reference_smbd() as smbd, gateway_node(tmp_path_factory.mktemp("gw")) as gw:
        yield gw, smbd


def _lsa(server: Server, pipe: str = "lsarpc") -> tuple[rpcrt.DCERPC_v5, bytes]:
    client = dce(server, pipe, lsat.MSRPC_UUID_LSAT)
    handle = lsad.hLsarOpenPolicy2(client, MAXIMUM_ALLOWED)["PolicyHandle"]
    return client, handle


def _call(fn: Any, *args: Any) -> tuple[int | str, Any]:
    """(NTSTATUS, response) whether the call succeeded or not; (its name, None) for a FAULT."""
    try:
        resp = fn(*args)
    except (lsat.DCERPCSessionError, lsad.DCERPCSessionError) as e:
        return e.get_error_code(), e.get_packet()
    except rpcrt.DCERPCException as e:  # a FAULT: its name
        return str(e), None
    return 0, resp


def _domains(resp: Any) -> list[tuple[str, str]]:
    ref = resp["ReferencedDomains"]
    if ref in (NULL, None) or not ref["Entries"]:
        return []
    return [(str(d["Name"]), d["Sid"].formatCanonical()) for d in ref["Domains"]]


def _sids_answer(server: Server, resp: Any, arr: str) -> list[tuple[str, str, str]]:
    """Per SID: (use, domain\\name or the unknown's name, domain SID), normalised."""
    domains = _domains(resp)
    out = []
    for e in resp["TranslatedNames"][arr]:
        index = int(e["DomainIndex"])
        domain, dsid = domains[index] if index >= 0 else ("-", "-")
        out.append((str(e["Use"]), normalise(f"{domain}\\{e['Name']}", server),
                    normalise(dsid, server)))  # fmt: skip
    return out


def _names_answer(server: Server, resp: Any, full_sid: bool) -> list[tuple[str, str, str]]:
    domains = _domains(resp)
    out = []
    for e in resp["TranslatedSids"]["Sids"]:
        index = int(e["DomainIndex"])
        domain, dsid = domains[index] if index >= 0 else ("-", "-")
        if full_sid:
            sid = e["Sid"].formatCanonical() if index >= 0 else "-"
        else:
            sid = f"{dsid}-{e['RelativeId']}" if index >= 0 else "-"
        out.append((str(e["Use"]), normalise(domain, server), normalise(sid, server)))
    return out


def _lookup_sids3(client: rpcrt.DCERPC_v5, sid: str) -> Any:
    req = lsat.LsarLookupSids3()
    info = lsat.LSAPR_SID_INFORMATION()
    info["Sid"].fromCanonical(sid)
    req["SidEnumBuffer"]["Entries"] = 1
    req["SidEnumBuffer"]["SidInfo"].append(info)
    req["TranslatedNames"]["Names"] = NULL
    req["LookupLevel"] = WKSTA
    req["LookupOptions"] = 0
    req["ClientRevision"] = 1
    return client.request(req)


# -- rpcclient, both servers ------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "lsaquery",
        "lsaquery 5",
        "getusername",
        "lookupnames test Everyone Administrators SYSTEM Users None nosuch",
        "lookupnames nosuch",
        "lookupsids " + " ".join([*WELL_KNOWN, UNKNOWN_SID]),
        f"lookupsids {UNKNOWN_SID}",
        "lookupsids3 S-1-1-0",
        "lookupnames4 test",
    ],
)
def test_rpcclient_answers_as_smbd(servers: tuple[Server, Server], command: str) -> None:
    gw, smbd = servers
    ours = normalise(rpcclient(gw, command), gw)
    theirs = normalise(rpcclient(smbd, command), smbd)
    assert ours == theirs
    assert "bad_stub" not in ours and "error" not in ours


def test_rpcclient_lookupsids_of_the_users(servers: tuple[Server, Server]) -> None:
    """A user's SID and the domain's None group, each server asked about its own."""
    answers = []
    for server in servers:
        out = rpcclient(server, "lookupnames test None")
        sids = [line.split()[1] for line in out.splitlines()]
        answers.append(normalise(rpcclient(server, "lookupsids " + " ".join(sids)), server))
    assert answers[0] == answers[1]
    assert answers[0].splitlines() == [
        "domain-rid server\\test (1)",
        "domain-513 server\\none (2)",
    ]


# -- impacket, both servers --------------------------------------------------------------


def test_lookup_sids_as_smbd(servers: tuple[Server, Server]) -> None:
    results = []
    for server in servers:
        client, handle = _lsa(server)
        mixed = _call(lsat.hLsarLookupSids, client, handle, [*WELL_KNOWN, UNKNOWN_SID], WKSTA)
        mixed2 = _call(lsat.hLsarLookupSids2, client, handle, [*WELL_KNOWN, UNKNOWN_SID], WKSTA)
        none = _call(lsat.hLsarLookupSids, client, handle, [UNKNOWN_SID], WKSTA)
        results.append((
            mixed[0], _sids_answer(server, mixed[1], "Names"), int(mixed[1]["MappedCount"]),
            mixed2[0], _sids_answer(server, mixed2[1], "Names"),
            none[0], int(none[1]["MappedCount"]),
            [e["Name"] for e in none[1]["TranslatedNames"]["Names"]],
        ))  # fmt: skip
        client.disconnect()
    assert results[0] == results[1]
    assert results[0][0] == STATUS_SOME_NOT_MAPPED and results[0][2] == len(WELL_KNOWN)
    assert results[0][5] == STATUS_NONE_MAPPED and results[0][7] == [UNKNOWN_SID]
    assert results[0][1][0] == ("5", "\\everyone", "s-1-1")


def test_lookup_names_as_smbd(servers: tuple[Server, Server]) -> None:
    results = []
    for server in servers:
        client, handle = _lsa(server)
        row = []
        for fn, full in ((lsat.hLsarLookupNames, False), (lsat.hLsarLookupNames2, False),
                         (lsat.hLsarLookupNames3, True)):  # fmt: skip
            names = [n.replace("SERVER", server.name) for n in NAMES]
            status, resp = _call(fn, client, handle, [*names, "nosuch"])
            row.append((status, int(resp["MappedCount"]), _names_answer(server, resp, full)))
            status, resp = _call(fn, client, handle, ["nosuch"])
            row.append((status, int(resp["MappedCount"])))
        results.append(row)
        client.disconnect()
    assert results[0] == results[1]
    status, mapped, answer = results[0][0]
    assert status == STATUS_SOME_NOT_MAPPED and mapped == len(NAMES)
    assert answer[0] == ("1", "server", "domain-rid")
    assert answer[-1] == ("8", "-", "-")
    assert results[0][1] == (STATUS_NONE_MAPPED, 0)


def test_policy_information_as_smbd(servers: tuple[Server, Server]) -> None:
    results = []
    for server in servers:
        client, handle = _lsa(server)
        primary = lsad.hLsarQueryInformationPolicy(client, handle, 3)["PolicyInformation"]
        account = lsad.hLsarQueryInformationPolicy(client, handle, 5)["PolicyInformation"]
        dns = _call(lsad.hLsarQueryInformationPolicy, client, handle, 12)[0]
        results.append((
            str(primary["PolicyPrimaryDomainInfo"]["Name"]),
            primary["PolicyPrimaryDomainInfo"]["Sid"],
            normalise(str(account["PolicyAccountDomainInfo"]["DomainName"]), server),
            normalise(account["PolicyAccountDomainInfo"]["DomainSid"].formatCanonical(), server),
            dns,
        ))  # fmt: skip
        client.disconnect()
    assert results[0] == results[1]
    assert results[0] == ("WORKGROUP", b"", "server", "domain", STATUS_INVALID_INFO_CLASS)


def test_handles_and_denied_calls_as_smbd(servers: tuple[Server, Server]) -> None:
    results = []
    for server in servers:
        client, handle = _lsa(server, "lsass")
        sids3 = _call(_lookup_sids3, client, "S-1-1-0")[0]
        names4 = _call(lsat.hLsarLookupNames4, client, ["test"])[0]
        user = lsat.hLsarGetUserName(client)
        lsad.hLsarClose(client, handle)
        with pytest.raises(rpcrt.DCERPCException) as closed:
            lsad.hLsarClose(client, handle)
        results.append((sids3, names4, user["UserName"], user["DomainName"], str(closed.value)))
        client.disconnect()
    assert results[0] == results[1]
    assert results[0][:2] == ("rpc_s_access_denied", "rpc_s_access_denied")
    assert results[0][2] == USER
    assert "context_mismatch" in results[0][4]


@pytest.mark.parametrize(
    "access",
    [0, lsad.POLICY_VIEW_LOCAL_INFORMATION, lsad.POLICY_LOOKUP_NAMES, 0x2, 0x02000000,
     0x20000000, 0x10, 0x0FFF, 0xF0FFF, 0x40000000, 0x10000000],
)  # fmt: skip
def test_policy_access_as_smbd(servers: tuple[Server, Server], access: int) -> None:
    """What a handle opened for ``access`` may do: open, query, translate."""
    results = []
    for server in servers:
        client = dce(server, "lsarpc", lsat.MSRPC_UUID_LSAT)
        status, resp = _call(lsad.hLsarOpenPolicy2, client, access)
        row = [status]
        if status == 0:
            handle = resp["PolicyHandle"]
            row.append(_call(lsad.hLsarQueryInformationPolicy, client, handle, 5)[0])
            row.append(_call(lsat.hLsarLookupSids, client, handle, ["S-1-1-0"], WKSTA)[0])
            row.append(_call(lsat.hLsarLookupNames, client, handle, ["Everyone"])[0])
        results.append(row)
        client.disconnect()
    assert results[0] == results[1]


# -- what smbd (4.17) does not have: checked against MS-LSAD ---------------------------


def test_query_information_policy2_and_open_policy3(servers: tuple[Server, Server]) -> None:
    gw, _ = servers
    client, handle = _lsa(gw)
    info = lsad.hLsarQueryInformationPolicy2(client, handle, 5)["PolicyInformation"]
    assert info["PolicyAccountDomainInfo"]["DomainName"] == GATEWAY_NAME
    assert info["PolicyAccountDomainInfo"]["DomainSid"].formatCanonical() == acl.DOMAIN
    req = LsarOpenPolicy3()
    req["SystemName"] = NULL
    req["ObjectAttributes"]["RootDirectory"] = NULL
    req["ObjectAttributes"]["ObjectName"] = NULL
    req["ObjectAttributes"]["SecurityDescriptor"] = NULL
    req["ObjectAttributes"]["SecurityQualityOfService"] = NULL
    req["DesiredAccess"] = MAXIMUM_ALLOWED
    req["InVersion"] = 1
    req["InRevisionInfo"]["tag"] = 1
    req["InRevisionInfo"]["V1"]["Revision"] = 1
    req["InRevisionInfo"]["V1"]["SupportedFeatures"] = 0
    client.call(req.opnum, req)
    resp = LsarOpenPolicy3Response(client.recv())
    assert resp["ErrorCode"] == 0 and resp["OutVersion"] == 1
    assert resp["OutRevisionInfo"]["V1"]["Revision"] == 1
    new = resp["PolicyHandle"]
    names = lsat.hLsarLookupSids(client, new, ["S-1-5-32-544"], WKSTA)
    assert names["TranslatedNames"]["Names"][0]["Name"] == "Administrators"
    lsad.hLsarClose(client, new)
    lsad.hLsarClose(client, handle)
    client.disconnect()


# -- smbcacls: a descriptor shown with names ---------------------------------------------


def _node_on_445(workdir: Path) -> Any:
    """smbcacls has no port option: a node on port 445 of a loopback address of its own."""
    for _ in range(5):
        a, b, c = (random.randrange(2, 255) for _ in range(3))
        host = f"127.{a}.{b}.{c}"
        try:
            return start_gateway(workdir / host, host=host, port=445)
        except RuntimeError:
            continue
    pytest.fail("no loopback address with port 445 free")


def test_smbcacls_shows_names(tmp_path: Path) -> None:
    node = _node_on_445(tmp_path)
    try:
        (node.share_dir / "host.txt").write_text("made on the host\n")
        env_home = {"HOME": str(tmp_path)}
        put = subprocess.run(
            [need("smbclient"), node.unc, "-U", f"{USER}%{PASSWORD}", "-c", "mkdir made"],
            capture_output=True, text=True, timeout=60, env=env_home,
        )  # fmt: skip
        assert put.returncode == 0, put.stdout + put.stderr

        def cacls(name: str, *extra: str) -> str:
            done = subprocess.run(
                [need("smbcacls"), node.unc, name, "-U", f"{USER}%{PASSWORD}", *extra],
                capture_output=True, text=True, timeout=60, env=env_home,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        made = cacls("made").splitlines()
        assert "OWNER:SMBGW\\test" in made
        assert "GROUP:SMBGW\\None" in made
        numeric = cacls("made", "--numeric")
        assert acl.user_sid(USER) in numeric  # the names above are those SIDs'
        host = cacls("host.txt").splitlines()
        assert "ACL:NT AUTHORITY\\SYSTEM:ALLOWED/0x0/FULL" in host
        assert "ACL:Everyone:ALLOWED/0x0/FULL" in host
        assert not any("S-1-" in line for line in made + host), made + host
        # a name resolves to a SID too: smbcacls looks it up to add an ACE
        cacls("made", "-a", "ACL:BUILTIN\\Users:ALLOWED/0x0/READ")
        assert "ACL:BUILTIN\\Users:ALLOWED/0x0/READ" in cacls("made").splitlines()
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.log()


# -- in this process: the pipe a session would open, driven by impacket's client ------------


def _open(caller: Caller) -> rpcrt.DCERPC_v5:
    view = ServerView("SMBGW", "", [], ["test", "Alice"])
    pipe = open_pipe("lsass", view, caller)
    assert pipe is not None
    client = rpcrt.DCERPC_v5(PipeTransport(pipe))
    client.bind(lsat.MSRPC_UUID_LSAT)
    return client


@pytest.mark.parametrize(
    ("caller", "name", "domain"),
    [(Caller("alice", False), "Alice", "SMBGW"),  # the users file's spelling
     (Caller("", True), "ANONYMOUS LOGON", "NT AUTHORITY")],
)  # fmt: skip
def test_get_user_name_of_the_caller(caller: Caller, name: str, domain: str) -> None:
    client = _open(caller)
    req = LsarGetUserName()
    req["SystemName"] = NULL
    req["UserName"] = NULL
    req["DomainName"] = ""  # a pointer to a NULL pointer: "and my domain, please"
    resp = client.request(req)
    assert (resp["UserName"], resp["DomainName"]) == (name, domain)


def test_lookups_edge_cases() -> None:
    client = _open(Caller("test", False))
    handle = lsad.hLsarOpenPolicy2(client, MAXIMUM_ALLOWED)["PolicyHandle"]
    names = ["alice@smbgw", "SMBGW\\ALICE", "smbgw", "Unix User\\root", "alice@elsewhere"]
    status, resp = _call(lsat.hLsarLookupNames3, client, handle, names)
    assert (status, resp["MappedCount"]) == (STATUS_SOME_NOT_MAPPED, 3)
    sids = [e["Sid"].formatCanonical() if int(e["DomainIndex"]) >= 0 else None
            for e in resp["TranslatedSids"]["Sids"]]  # fmt: skip
    assert sids == [acl.user_sid("alice"), acl.user_sid("alice"), acl.DOMAIN, None, None]
    names = lsat.hLsarLookupSids(client, handle, ["S-1-22-1-0", "S-1-22-2-0"], WKSTA)
    assert [(n["Name"], int(n["Use"])) for n in names["TranslatedNames"]["Names"]] == [
        ("root", 1),
        ("root", 4),
    ]
    assert _domains(names) == [("Unix User", "S-1-22-1"), ("Unix Group", "S-1-22-2")]
    with pytest.raises(rpcrt.DCERPCException, match="context_mismatch"):
        lsat.hLsarLookupSids(client, b"\x00" * 20, ["S-1-1-0"], WKSTA)


def test_open_policy3_asks_for_version_1() -> None:
    client = _open(Caller("test", False))
    req = LsarOpenPolicy3()
    req["SystemName"] = NULL
    for field in ("RootDirectory", "ObjectName", "SecurityDescriptor", "SecurityQualityOfService"):
        req["ObjectAttributes"][field] = NULL
    req["DesiredAccess"] = MAXIMUM_ALLOWED
    req["InVersion"] = 2
    req["InRevisionInfo"]["tag"] = 1
    client.call(req.opnum, req)
    resp = LsarOpenPolicy3Response(client.recv())
    assert resp["ErrorCode"] == 0xC000000D  # STATUS_INVALID_PARAMETER
    assert resp["PolicyHandle"] == bytes(20)
