"""What a users file holds for each user: an NT hash, or (older files) the password.

A line is ``USER:nt:HASH`` (HASH: 32 hex digits, the NT hash that
``smbgw passwd`` writes: MD4 of the UTF-16LE password, as Samba's smbpasswd
keeps it) or ``USER:PASSWORD`` in clear text.  NTLMv2 needs nothing but the NT
hash, so a node never needs the clear-text password; clear-text lines are still
read, with a warning (`file_warnings`).  A clear-text password that itself
starts with ``nt:`` cannot be told from a hash: such a line must hold a valid
hash, and that password must be set with ``smbgw passwd``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from impacket import ntlm

NT_PREFIX = "nt:"


@dataclass(frozen=True)
class NtHash:
    """A user's NT hash (16 bytes), as read from a ``USER:nt:HASH`` line."""

    digest: bytes

    def __repr__(self) -> str:
        # Password-equivalent for NTLM: never in a log or a traceback.
        return "NtHash(<hidden>)"


# What the users table maps a user name to.
Credential = str | NtHash


def nt_hash(password: str) -> bytes:
    """MD4 of the UTF-16LE password (MS-NLMP 3.3.1 NTOWFv1), as smbpasswd stores it.

    impacket's MD4, because OpenSSL 3 leaves MD4 out of its default provider.
    """
    return bytes(ntlm.compute_nthash(password))


def nt_hash_of(credential: Credential) -> bytes:
    return credential.digest if isinstance(credential, NtHash) else nt_hash(credential)


def parse_credential(value: str) -> Credential:
    """The part of a line after ``USER:``; ValueError for a malformed ``nt:`` hash."""
    if not value.startswith(NT_PREFIX):
        return value
    digits = value[len(NT_PREFIX) :].strip()
    if len(digits) != 32:
        raise ValueError("nt: must be followed by 32 hex digits (write it with smbgw passwd)")
    try:
        return NtHash(bytes.fromhex(digits))
    except ValueError:
        raise ValueError(
            "nt: must be followed by 32 hex digits (write it with smbgw passwd)"
        ) from None


def hash_line(user: str, password: str) -> str:
    """The users-file line for ``user`` (no line ending)."""
    return f"{user}:{NT_PREFIX}{nt_hash(password).hex()}"


def file_warnings(path: str, users: Mapping[str, Credential]) -> list[str]:
    """One-line warnings for the operator about a users file that loaded."""
    out: list[str] = []
    plain = sorted(name for name, cred in users.items() if not isinstance(cred, NtHash))
    if plain:
        shown = ", ".join(plain[:5]) + (f" and {len(plain) - 5} more" if len(plain) > 5 else "")
        out.append(
            f"users file {path} holds clear-text passwords ({shown}): run "
            f"'smbgw passwd --users {path} USER' for each to store NT hashes instead"
        )
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return out  # it loaded a moment ago; a vanished file shows at the next load
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # An NT hash is as good as the password for an NTLM logon (pass-the-hash).
        out.append(
            f"users file {path} can be read or written by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
        )
    return out
