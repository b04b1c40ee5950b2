"""What a request of a compound chain takes from the requests before it.

MS-SMB2 3.3.5.2.7.2: a related request (SMB2_FLAGS_RELATED_OPERATIONS) uses
the SessionId, TreeId and FileId the previous request used or created, not
the ones in its own header. The rules Windows follows (and smbtorture's
smb2.compound checks) where the specification leaves a choice:

- a related request whose predecessor found no session (the first request
  of the chain, or one with an unknown SessionId) fails with
  STATUS_INVALID_PARAMETER, and so does the rest of the related run;
- only a failed CREATE passes its error on: a related request naming the
  all-ones FileId gets the CREATE's status. Any other failure (a WRITE
  denied, say) leaves the handle usable by the requests after it;
- an unrelated request starts afresh: the all-ones FileId is then just an
  unknown handle (STATUS_FILE_CLOSED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol.constants import Command, NtStatusError, Status

if TYPE_CHECKING:
    from ..protocol.header import Header
    from .context import Reply, RequestContext
    from .state import Session, TreeConnect


def is_error(status: int) -> bool:
    """An NTSTATUS of severity error (warnings such as BUFFER_OVERFLOW are not)."""
    return (status >> 30) == 3


@dataclass(slots=True)
class ChainState:
    """The identifiers the next related request inherits."""

    session: Session | None = None
    tree: TreeConnect | None = None
    file_id: tuple[int, int] | None = None
    # Status of a CREATE of this related run that failed.
    create_error: int | None = None

    def begin(self, hdr: Header) -> None:
        if not hdr.is_related:
            self.file_id = None
            self.create_error = None

    def related_session(self, sessions: dict[int, Session]) -> Session:
        session = self.session
        if session is None or sessions.get(session.session_id) is not session:
            raise NtStatusError(Status.INVALID_PARAMETER, "related request without a session")
        return session

    def related_tree(self, session: Session) -> TreeConnect:
        tree = self.tree
        if tree is None or tree.session is not session:
            raise NtStatusError(Status.INVALID_PARAMETER, "related request without a tree")
        if session.trees.get(tree.tree_id) is not tree:
            raise NtStatusError(Status.NETWORK_NAME_DELETED)
        return tree

    def lookup_failed(self) -> None:
        """The request named no usable session or tree: related successors cannot run."""
        self.session = None
        self.tree = None

    def after(
        self,
        hdr: Header,
        ctx: RequestContext,
        reply: Reply,
        sessions: dict[int, Session],
    ) -> None:
        if reply.file_id is not None:
            self.file_id = reply.file_id
        elif ctx.used_file_id is not None:
            self.file_id = ctx.used_file_id
        if hdr.command == Command.CREATE and is_error(reply.status):
            self.create_error = reply.status
        if ctx.session is not None:
            self.session = ctx.session
        elif not hdr.is_related:
            # ECHO and NEGOTIATE use no session, but name one a successor may use.
            self.session = sessions.get(hdr.session_id)
        if ctx.tree is not None:
            self.tree = ctx.tree
        elif not hdr.is_related:
            self.tree = self.session.trees.get(hdr.tree_id) if self.session else None
