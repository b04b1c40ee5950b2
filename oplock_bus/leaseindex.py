"""Which file a lease (ClientGUID, LeaseKey) is bound to, cluster-wide.

A lease acknowledgement names only the lease, so the bus needs this map.
It lives in its own documents (a lease and a file generally hash to
different Redis Cluster slots), so it cannot change atomically with a
file's state. It is therefore only a hint checked against the file state
(the truth), plus a count of opens in flight so that a failing open does
not unbind a lease another open is about to use.
"""

from __future__ import annotations

from typing import Any

from .api import FileKey
from .store import Doc, Store


def lease_doc_key(lid: str) -> str:
    return f"lease:{{{lid}}}"


def file_doc_key(file: FileKey) -> str:
    return f"file:{{{file}}}"


class LeaseIndex:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _holds(self, file: FileKey, lid: str) -> bool:
        _, doc = await self.store.load(file_doc_key(file))
        return doc is not None and lid in doc.get("leases", {})

    async def bind(self, lid: str, file: FileKey) -> bool:
        """Reserve the lease for ``file``; False if another file holds it.

        MS-SMB2 3.3.5.9.8: a lease key already in use on another file fails
        the create with STATUS_INVALID_PARAMETER.
        """

        def claim(doc: Doc | None) -> tuple[Doc | None, Any]:
            if doc is None or doc["file"] == file:
                pending = doc["pending"] if doc is not None else 0
                return {"file": file, "pending": pending + 1}, None
            return doc, doc["file"]

        for _ in range(5):
            other = await self.store.transact(lease_doc_key(lid), claim)
            if other is None:
                return True
            if await self._holds(other, lid):
                return False

            def steal(doc: Doc | None, stale: FileKey = other) -> tuple[Doc | None, bool]:
                if doc is not None and doc["file"] == stale:
                    return {"file": file, "pending": 1}, True
                return doc, False

            if await self.store.transact(lease_doc_key(lid), steal):
                return True
        return False

    async def release(self, lid: str, file: FileKey) -> None:
        """An open that bound the lease has finished (granted or not)."""

        def done(doc: Doc | None) -> tuple[Doc | None, bool]:
            if doc is None or doc["file"] != file:
                return doc, False
            pending = max(0, doc["pending"] - 1)
            return {"file": file, "pending": pending}, pending == 0

        # The file is looked at after the count went down, not before: its
        # last open may close in between (``dropped``, which keeps the entry
        # while an open is in flight), and the entry must not outlive both.
        if await self.store.transact(lease_doc_key(lid), done):
            if not await self._holds(file, lid):
                await self.dropped(lid, file)

    async def dropped(self, lid: str, file: FileKey) -> None:
        """The lease's last open closed."""

        def forget(doc: Doc | None) -> tuple[Doc | None, None]:
            if doc is not None and doc["file"] == file and doc["pending"] == 0:
                return None, None
            return doc, None

        await self.store.transact(lease_doc_key(lid), forget)

    async def lookup(self, lid: str) -> FileKey | None:
        _, doc = await self.store.load(lease_doc_key(lid))
        if doc is None:
            return None
        file: FileKey = doc["file"]
        return file if await self._holds(file, lid) else None
