"""The names the server gives SIDs and the SIDs it gives names: what lsarpc translates.

The server is a standalone server: its account domain is named after the
server (``server_name``) and has the SID the file system gives its users
(``gateway.fs.acl.DOMAIN``, each user's RID derived from the name), as Windows
and smbd name a standalone server's domain after the machine (MS-LSAT 3.1.1.1).
Besides the users of the users file and the domain's "None" group (RID 513,
every user's primary group), the server knows the BUILTIN aliases and the
well-known SIDs its descriptors and tokens use (MS-DTYP 2.4.2.4), spelt as
Windows spells them, and the Unix owners of files nobody wrote a descriptor
for (``S-1-22-1-uid``, ``S-1-22-2-gid``, ``gateway.fs.descriptors``) under
smbd's "Unix User" and "Unix Group" domains, named from the host's accounts.

Names are looked up as MS-LSAT 3.1.4.5 describes: an isolated name
(``test``), a qualified one (``DOMAIN\\test``, ``\\Everyone``) or a
user principal name (``test@DOMAIN``); the match ignores case.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Iterable
from dataclasses import dataclass

from ..fs import acl
from ..fs.descriptors import UNIX_GROUP, UNIX_USER

# SID_NAME_USE (MS-LSAT 2.2.13)
SID_TYPE_USER = 1
SID_TYPE_GROUP = 2
SID_TYPE_DOMAIN = 3
SID_TYPE_ALIAS = 4
SID_TYPE_WELL_KNOWN_GROUP = 5
SID_TYPE_UNKNOWN = 8

UNIX_USER_DOMAIN = "Unix User"
UNIX_GROUP_DOMAIN = "Unix Group"
NT_AUTHORITY = "NT AUTHORITY"
NT_AUTHORITY_SID = "S-1-5"
BUILTIN = "BUILTIN"
BUILTIN_SID = "S-1-5-32"
DOMAIN_NONE_RID = 513


@dataclass(frozen=True, slots=True)
class Account:
    """A SID the server can name, and the domain it is referenced under."""

    sid: str
    name: str
    use: int
    domain: str  # the referenced domain's name ("" for Everyone, CREATOR OWNER, ...)
    domain_sid: str

    @property
    def rid(self) -> int:
        """The last sub-authority (LsarLookupNames answers domain + RID); a
        domain's own entry has none: 0xFFFFFFFF, as Windows answers."""
        if self.sid == self.domain_sid:
            return 0xFFFFFFFF
        return int(self.sid.rsplit("-", 1)[1])


def _prefix(sid: str) -> str:
    return sid.rsplit("-", 1)[0]


def _well_known() -> list[Account]:
    wkg = SID_TYPE_WELL_KNOWN_GROUP
    table = [
        (acl.EVERYONE, "Everyone", wkg, ""),
        (acl.CREATOR_OWNER, "CREATOR OWNER", wkg, ""),
        (acl.CREATOR_GROUP, "CREATOR GROUP", wkg, ""),
        (acl.OWNER_RIGHTS, "OWNER RIGHTS", wkg, ""),
        (acl.NETWORK, "NETWORK", wkg, NT_AUTHORITY),
        (acl.ANONYMOUS, "ANONYMOUS LOGON", wkg, NT_AUTHORITY),
        (acl.AUTHENTICATED_USERS, "Authenticated Users", wkg, NT_AUTHORITY),
        (acl.LOCAL_SYSTEM, "SYSTEM", wkg, NT_AUTHORITY),
        (acl.BUILTIN_ADMINISTRATORS, "Administrators", SID_TYPE_ALIAS, BUILTIN),
        (acl.BUILTIN_USERS, "Users", SID_TYPE_ALIAS, BUILTIN),
        (acl.BUILTIN_GUESTS, "Guests", SID_TYPE_ALIAS, BUILTIN),
    ]
    out = [Account(sid, name, use, dom, _prefix(sid)) for sid, name, use, dom in table]
    out.append(Account(BUILTIN_SID, BUILTIN, SID_TYPE_DOMAIN, BUILTIN, BUILTIN_SID))
    return out


_WELL_KNOWN = _well_known()


class Directory:
    """What one pipe open can translate: fixed at open, from the server's
    name and the users file as they were then."""

    def __init__(self, server_name: str, users: Iterable[str]) -> None:
        self.domain = server_name.upper()
        self.domain_sid = acl.DOMAIN
        accounts = list(_WELL_KNOWN)
        accounts.append(
            Account(self.domain_sid, self.domain, SID_TYPE_DOMAIN, self.domain, self.domain_sid)
        )
        accounts.append(
            Account(f"{self.domain_sid}-{DOMAIN_NONE_RID}", "None", SID_TYPE_GROUP,
                    self.domain, self.domain_sid)
        )  # fmt: skip
        for user in users:
            accounts.append(
                Account(acl.user_sid(user), user, SID_TYPE_USER, self.domain, self.domain_sid)
            )
        self._by_sid = {a.sid: a for a in accounts}
        # First spelling wins: a user cannot shadow a well-known or BUILTIN name.
        self._by_name: dict[str, Account] = {}
        for a in accounts:
            self._by_name.setdefault(a.name.casefold(), a)
        self._by_qualified = {(a.domain.casefold(), a.name.casefold()): a for a in accounts}

    def by_sid(self, sid: str) -> Account | None:
        found = self._by_sid.get(sid)
        if found is None and sid.startswith((UNIX_USER, UNIX_GROUP)):
            return _unix_account(sid)
        return found

    def by_name(self, name: str) -> Account | None:
        """MS-LSAT 3.1.4.5's name forms: isolated, ``DOMAIN\\name``, ``name@DOMAIN``."""
        if "\\" in name:
            domain, _, account = name.partition("\\")
            if not account:
                return self._by_name.get(domain.casefold()) if domain else None
            return self._by_qualified.get((domain.casefold(), account.casefold()))
        if "@" in name:
            account, _, domain = name.rpartition("@")
            found = self._by_qualified.get((domain.casefold(), account.casefold()))
            if found is not None and found.use == SID_TYPE_USER:
                return found
            return None
        return self._by_name.get(name.casefold())

    def user_account(self, username: str, guest: bool) -> Account:
        """The account a session acts as (its token's user SID)."""
        sid = acl.token_for(username, guest=guest).user
        found = self._by_sid.get(sid)
        if found is None:  # a user removed from the users file since it logged on
            return Account(sid, username, SID_TYPE_USER, self.domain, self.domain_sid)
        return found


def _unix_account(sid: str) -> Account | None:
    prefix, _, number = sid.rpartition("-")
    if prefix + "-" not in (UNIX_USER, UNIX_GROUP):
        return None
    try:
        xid = int(number)
        if prefix + "-" == UNIX_USER:
            return Account(sid, pwd.getpwuid(xid).pw_name, SID_TYPE_USER, UNIX_USER_DOMAIN, prefix)
        return Account(sid, grp.getgrgid(xid).gr_name, SID_TYPE_ALIAS, UNIX_GROUP_DOMAIN, prefix)
    except (KeyError, ValueError, OverflowError):
        return None
