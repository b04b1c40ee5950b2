"""``smbgw status`` (issue 17, item 5): who holds what, as Samba's smbstatus
and ``ctdb status`` show it; both sides, as ``drain.py`` has both.

The bus knows files by identity and opens by bus open id; the user, client
address, share, path, dialect and signing of an open are known only to the
node that holds it (the bus keeps no SMB knowledge). So the command asks the
nodes, and ``statusview.py`` joins their answers with the bus's records by
bus open id.

**Asking the nodes of a Redis bus** (``smbgw status --bus URL``): the
command publishes a request on the bus's broadcast channel (topic
``status``, a random request id) and every node answers by writing a
compact JSON of its sessions, tree connects and opens (by bus open id) into
the hash ``{nodes}:views`` under its node id, with the request id. The
command repeats the request every 0.5 s until each live node that ever
answered (a node enters itself there when it starts) has answered this one,
or 2 s have passed: a node that does not answer (frozen, cut off) is shown
as such, its opens with what the bus knows. Nothing is written while nobody
asks, and an answer is always current: the alternative, each node
publishing its view on every change, costs a Redis write per open and close
and is still stale by up to its refresh interval. The same pattern carries
``smbgw drain``'s requests.

**Dead nodes.** The bus forgets a node soon after its heartbeat lapses (its
reaper closes its opens and removes its member record). The node that reaps
it enters ``{nodes}:dead`` (node id -> epoch, time, address), so that status
shows it ``DEAD since ...`` for a day (or until it registers again). A clean
stop removes the node's entries in both hashes.

**One node, any bus: the admin socket.** Every node listens on a Unix socket,
``<runtime dir>/<node id>.sock`` (mode 0600: its user and root only; the
runtime dir is ``--runtime-dir``, TOML ``runtime_dir``, else systemd's
``$RUNTIME_DIRECTORY``, ``/run/smbgw`` for root, ``$XDG_RUNTIME_DIR/smbgw``,
or ``/tmp/smbgw-<uid>``). ``smbgw status`` without ``--bus`` asks the nodes
there; a node on the in-process bus answers with its whole lock space and
its sessions and opens, a node on a Redis bus with the cluster's, as
``--bus`` would, without the command needing the bus's URL or password. A
Unix socket rather than an HTTP endpoint: it needs no port, no address and
no authentication of its own (the file mode is the access check, as for
Samba's and CTDB's local sockets), and it cannot be reached from the
network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import stat
import sys
import time
from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING, Any, Protocol

from oplock_bus.api import BusUnavailable, LockBus, NodeId
from oplock_bus.status import (
    DEAD,
    VIEWS,
    forget_texts,
    pending_breaks,
    read_bus,
    read_text,
    read_texts,
    tool_target,
    write_text,
)

from .config import Config, ConfigError
from .protocol.constants import Cipher, Dialect, SigningAlgorithm
from .smb.state import Open, Session
from .statusview import merge, render

if TYPE_CHECKING:
    from oplock_bus.liveness import Liveness
    from oplock_bus.redis_store import RedisStore

log = logging.getLogger("smbgw.status")

STATUS_TOPIC = "status"
ANSWER_WAIT = 2.0  # seconds the command waits for the nodes' answers
UNANNOUNCED_WAIT = 0.5  # ... for a member that never answered before
REQUEST_REPEAT = 0.5  # seconds between two requests while some node has not answered
POLL = 0.05  # seconds between two looks at the answers
DEAD_KEPT = 86400.0  # seconds a reaped node stays listed as dead
REAP_LOOK = 0.5  # seconds between two looks at what this node's bus reaped
SOCKET_TIMEOUT = 10.0  # seconds the command waits for a node's socket to answer
_MAX_REQUEST = 4096  # bytes of a request on the admin socket


# -- names ----------------------------------------------------------------------------------

_DIALECTS: dict[int, str] = {
    Dialect.SMB2_0_2: "2.0.2", Dialect.SMB2_1: "2.1", Dialect.SMB3_0: "3.0",
    Dialect.SMB3_0_2: "3.0.2", Dialect.SMB3_1_1: "3.1.1",
}  # fmt: skip
_SIGNING: dict[int, str] = {
    SigningAlgorithm.HMAC_SHA256: "HMAC-SHA256",
    SigningAlgorithm.AES_CMAC: "AES-128-CMAC",
    SigningAlgorithm.AES_GMAC: "AES-128-GMAC",
}
_CIPHERS: dict[int, str] = {
    Cipher.AES_128_CCM: "AES-128-CCM", Cipher.AES_128_GCM: "AES-128-GCM",
    Cipher.AES_256_CCM: "AES-256-CCM", Cipher.AES_256_GCM: "AES-256-GCM",
}  # fmt: skip


def dialect_name(dialect: int) -> str:
    return _DIALECTS.get(dialect, f"0x{dialect:04x}")


# -- the node's side: what it knows ---------------------------------------------------------


class StatusNode(Protocol):
    """What status reads of a node (``gateway.node.Node``)."""

    node_id: NodeId
    bus: LockBus
    config: Config
    fencings: int  # times it dropped every client because the bus could not vouch for it
    last_fenced: float | None  # when it last did (wall time)

    @property
    def connections(self) -> Sized: ...
    @property
    def sessions(self) -> Mapping[int, Session]: ...
    @property
    def opens(self) -> Mapping[str, Open]: ...
    def listening(self) -> list[str]: ...


def _user(s: Session) -> str:
    if s.is_anonymous:
        return "(anonymous)"
    return s.username or ("guest" if s.is_guest else "?")


def _session(s: Session) -> dict[str, Any]:
    signing = None
    if s.signing_key:
        algorithm = s.signing_algorithm if s.signing_algorithm is not None else -1
        signing = _SIGNING.get(algorithm, f"0x{algorithm:x}")
    cipher = None
    if s.encrypt_data or any(t.encrypt_data for t in s.trees.values()):
        number = s.cipher if s.cipher is not None else -1
        cipher = _CIPHERS.get(number, f"0x{number:x}")
        if not s.encrypt_data:
            cipher += " (some shares)"
    return {
        "session_id": f"0x{s.session_id:x}",
        "user": _user(s),
        "domain": s.domain,
        "guest": s.is_guest,
        "anonymous": s.is_anonymous,
        "state": s.state.value,
        "dialect": dialect_name(s.dialect),
        "clients": sorted({conn.peer for conn in s.channels}),
        "signing": signing,
        "signing_required": s.signing_required,
        "encryption": cipher,
        "trees": [
            {"tree_id": t.tree_id, "share": t.share.name,
             "encrypted": bool(t.encrypt_data or s.encrypt_data)}
            for t in sorted(s.trees.values(), key=lambda t: t.tree_id)
        ],
    }  # fmt: skip


def _open(op: Open) -> dict[str, Any]:
    s = op.tree.session
    return {
        "session_id": f"0x{s.session_id:x}",
        "user": _user(s),
        "client": op.connection.peer if op.connection is not None else None,
        "share": op.tree.share.name,
        "path": op.smb_name,
        "directory": op.is_dir,
    }


def node_view(node: StatusNode) -> dict[str, Any]:
    """This node's sessions and opens (by bus open id) as plain data: the SMB
    facts only the node knows. Oplock and lease states, locks and breaks are
    the bus's, and come from there."""
    return {
        "address": f"{node.config.listen_host}:{node.config.listen_port}",
        "listening": node.listening(),
        "connections": len(node.connections),
        "vouched": node.bus.vouches(node.node_id),
        "fencings": node.fencings,
        "last_fenced": node.last_fenced,
        "sessions": [_session(s) for _, s in sorted(node.sessions.items())],
        "opens": {oid: _open(op) for oid, op in node.opens.items() if oid},
    }


# -- the node's side: answering -------------------------------------------------------------


class NodeStatus:
    """Answers status requests: on a Redis bus through ``{nodes}:views``, on
    any bus through the admin socket; and enters the nodes it reaps as dead."""

    def __init__(
        self, node: StatusNode, store: RedisStore | None, liveness: Liveness | None
    ) -> None:
        self.node = node
        self.store = store
        self.liveness = liveness
        self.admin: AdminSocket | None = None
        self._answered: set[str] = set()  # request ids, so that repeats cost nothing
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaped_seen = 0
        self._watch: asyncio.Task[None] | None = None
        self._socket_dir: tuple[str, bool] | None = None  # (runtime dir, given explicitly)
        # Set once the node serves: before, a node refused its id must not
        # answer (nor remove) in the place of the live node holding that id.
        self._started = False

    def entry(self, request: str | None) -> dict[str, Any]:
        """What the node answers: its view, when, and to which request."""
        epoch = self.liveness.epoch(self.node.node_id) if self.liveness is not None else None
        return {
            "node": self.node.node_id, "epoch": epoch, "time": time.time(),
            "request": request, "view": node_view(self.node),
        }  # fmt: skip

    # lifecycle

    def check_socket(self, directory: str, explicit: bool) -> None:
        """Where the admin socket will be, checked first thing at start: a
        runtime dir given that cannot be used stops the node (ConfigError)
        before it joins the bus or listens."""
        self._socket_dir = (directory, explicit)
        if explicit:
            _check_dir(directory, self.node.node_id)

    async def start(self) -> None:
        """Once the node serves: its admin socket; on a Redis bus, enter its
        view (so that the command knows to wait for its answers) and watch
        what it reaps."""
        self._started = True
        if self._socket_dir is not None:
            self.admin = AdminSocket(self)
            await self.admin.start(*self._socket_dir, self.node.node_id)
        if self.store is not None:
            with contextlib.suppress(BusUnavailable):
                await self._write(None)
                # Back (restarted under its id): not dead any more.
                await forget_texts(self.store, DEAD, [self.node.node_id])
            self._watch = asyncio.get_running_loop().create_task(
                self._watch_reaped(), name="status-reaped"
            )

    async def stop(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        tasks = [t for t in (self._watch, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.store is not None and self._started:
            # It leaves on purpose: neither its last answer nor a dead mark.
            with contextlib.suppress(Exception):
                for name in (VIEWS, DEAD):
                    await forget_texts(self.store, name, [self.node.node_id])

    # Redis: requests on the broadcast channel

    def requested(self, payload: dict[str, Any]) -> None:
        request = payload.get("request")
        if not self._started or self.store is None or not isinstance(request, str):
            return
        if request in self._answered:
            return
        self._answered.add(request)
        if len(self._answered) > 64:  # a few recent ones are enough to skip repeats
            self._answered = {request}
        task = asyncio.get_running_loop().create_task(self._answer(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: str) -> None:
        try:
            await self._write(request)
        except BusUnavailable as e:
            log.debug("status request %s not answered: %s", request, e)
            self._answered.discard(request)  # the command asks again

    async def _write(self, request: str | None) -> None:
        assert self.store is not None
        text = json.dumps(self.entry(request), separators=(",", ":"))
        await write_text(self.store, VIEWS, self.node.node_id, text)

    async def _watch_reaped(self) -> None:
        """Enter every node this node's bus reaped as dead, with the time:
        the bus itself forgets it, and ``smbgw status`` should not."""
        liveness = self.liveness
        if liveness is None:
            return
        self._reaped_seen = len(liveness.reaped)
        while True:
            await asyncio.sleep(REAP_LOOK)
            if len(liveness.reaped) <= self._reaped_seen:
                continue
            fresh = liveness.reaped[self._reaped_seen :]
            try:
                await self._mark_dead(fresh)
                self._reaped_seen += len(fresh)
            except BusUnavailable as e:
                log.debug("dead nodes not entered for status yet: %s", e)
            except Exception:
                log.exception("entering dead nodes for status failed")
                self._reaped_seen += len(fresh)

    async def _mark_dead(self, reaped: list[tuple[NodeId, int]]) -> None:
        assert self.store is not None
        now = time.time()
        for node_id, epoch in reaped:
            address = None  # as it last told, if it ever answered
            last = await read_text(self.store, VIEWS, node_id)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                address = json.loads(last or "")["view"]["address"]
            mark = {"epoch": epoch, "since": now, "address": address, "by": self.node.node_id}
            await write_text(self.store, DEAD, node_id, json.dumps(mark))
        # Marks older than a day go, with what their nodes last answered.
        old = []
        for node_id, text in (await read_texts(self.store, DEAD)).items():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if now - float(json.loads(text)["since"]) > DEAD_KEPT:
                    old.append(node_id)
        for name in (DEAD, VIEWS):
            await forget_texts(self.store, name, old)

    # the admin socket

    async def document(self) -> dict[str, Any]:
        """The status document this node gives on its admin socket: the
        cluster's on a Redis bus, its own (the whole lock space) in-process."""
        own = self.entry(None)
        if self.store is not None:
            return await cluster_status(self.store, own={self.node.node_id: own})
        snap = await self.node.bus.snapshot()
        config = self.node.config
        bus = {
            "bus": "in-process (this node alone)",
            "namespace": None,
            "time": time.time(),
            "nodes": [{
                "id": self.node.node_id, "address": f"{config.listen_host}:{config.listen_port}",
                "epoch": None,
                "heartbeat": None, "alive": True, "drain": None, "takeover": False,
            }],
            "addresses": [],
            "files": snap["files"],
            "leases": snap["leases"],
            "pending_breaks": pending_breaks(snap["files"]),
            "generation": None,
            "recovering": False,
            "recovery": None,
        }  # fmt: skip
        return merge(bus, {self.node.node_id: own})


# -- the admin socket -----------------------------------------------------------------------


def runtime_dir(configured: str | None) -> tuple[str, bool]:
    """Where the nodes' admin sockets are, and whether the operator said so
    (a default that cannot be used only costs the socket, with a warning)."""
    if configured:
        return configured, True
    systemd = os.environ.get("RUNTIME_DIRECTORY")  # RuntimeDirectory= in the unit
    if systemd:
        return systemd.split(":", 1)[0], False
    if os.geteuid() == 0:
        return "/run/smbgw", False
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "smbgw"), False
    return f"/tmp/smbgw-{os.getuid()}", False


def socket_path(directory: str, node_id: str) -> str:
    return os.path.join(directory, f"{node_id}.sock")


def _own_dir(directory: str) -> None:
    """Create the runtime dir (0700), or check that an existing one is ours
    and not writable by others: a socket there must not be another user's."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.stat(directory)
    except OSError as e:
        raise ConfigError(f"runtime dir {directory}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"runtime dir {directory} is not a directory")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"runtime dir {directory} belongs to another user or others may write to it: "
            "give the node a directory of its own (--runtime-dir)"
        )


def _check_dir(directory: str, node_id: str) -> None:
    _own_dir(directory)
    path = socket_path(directory, node_id)
    if len(os.fsencode(path)) > 107:  # sun_path holds 108 bytes with its NUL
        raise ConfigError(f"admin socket {path}: path too long for a Unix socket")


class AdminSocket:
    """One node's Unix socket: a request line in, one JSON document out."""

    def __init__(self, status: NodeStatus) -> None:
        self.status = status
        self.path: str | None = None
        self._server: asyncio.base_events.Server | None = None
        self._inode: int | None = None

    async def start(self, directory: str, explicit: bool, node_id: str) -> None:
        path = socket_path(directory, node_id)
        try:
            _check_dir(directory, node_id)
            if await _answers(path):
                # Another process on this host uses this node id: its
                # socket stays; ours is not needed to serve.
                log.warning(
                    "admin socket %s is in use by another node with id %s on this host: this "
                    "node has none (smbgw status --bus still shows it)", path, node_id,
                )  # fmt: skip
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a killed node's
            # 0600 before it listens: nobody else can connect at any moment
            # (and no umask change, which would reach every thread's files).
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                os.chmod(path, 0o600)
                self._inode = os.stat(path).st_ino
                self._server = await asyncio.start_unix_server(
                    self._serve, sock=sock, limit=_MAX_REQUEST
                )
            except BaseException:
                sock.close()
                raise
        except (ConfigError, OSError) as e:
            why = str(e) if isinstance(e, ConfigError) else f"admin socket {path}: {e}"
            if explicit:
                raise ConfigError(why) from None
            log.warning("%s; smbgw status cannot ask this node locally", why)
            return
        self.path = path
        log.info("admin socket %s (smbgw status)", path)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        path = self.path
        # Only our own socket: another node may have taken the name since.
        with contextlib.suppress(OSError):
            if path is not None and os.stat(path).st_ino == self._inode:
                os.unlink(path)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), SOCKET_TIMEOUT)
            except (TimeoutError, ValueError, asyncio.LimitOverrunError):
                return
            try:
                command = json.loads(line or b"{}").get("command")
            except (ValueError, AttributeError):
                command = None
            if command != "status":
                answer: dict[str, Any] = {"error": 'unknown request; send {"command": "status"}'}
            else:
                try:
                    answer = {"status": await self.status.document()}
                except BusUnavailable as e:
                    answer = {"error": f"the bus cannot be read: {e}"}
                except Exception as e:  # noqa: BLE001 - one line for the command, the log has it
                    log.exception("status request on the admin socket failed")
                    answer = {"error": f"{type(e).__name__}: {e}"}
            writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass  # the command went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _answers(path: str) -> bool:
    """Whether a live process listens on the Unix socket at ``path``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# -- the command's side --------------------------------------------------------------------


async def cluster_status(
    store: RedisStore, own: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The status document of the Redis bus on ``store``: the bus's records
    and the live nodes' answers to a fresh request. ``own``: the answers of
    nodes in this process (a node does not hear its own broadcast)."""
    own = own or {}
    bus = await read_bus(store)
    expect = {str(m["id"]) for m in bus["nodes"] if m["alive"]} - set(own)
    # Gateway nodes enter themselves at start: those are waited for up to
    # ANSWER_WAIT. Any other live member (a node whose entry a Redis restart
    # lost, or a bus client that is no gateway) gets one round of requests.
    announced = set(await read_texts(store, VIEWS))
    request = secrets.token_hex(8)
    answered: set[str] = set()
    views: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    next_ask = 0.0
    while True:
        views = _parse(await read_texts(store, VIEWS))
        answered = {n for n, v in views.items() if v.get("request") == request}
        missing = expect - answered
        waited = time.monotonic() - started
        if not missing or waited > ANSWER_WAIT:
            break
        if waited > UNANNOUNCED_WAIT and not missing & announced:
            break
        if time.monotonic() >= next_ask:
            # Again until answered: a broadcast is lost by a subscriber that
            # is reconnecting just then (the nodes skip repeats).
            await store.broadcast(STATUS_TOPIC, {"request": request})
            next_ask = time.monotonic() + REQUEST_REPEAT
        await asyncio.sleep(POLL)
    views.update(own)
    dead = _parse(await read_texts(store, DEAD))
    return merge(bus, views, dead, answered | set(own))


def _parse(texts: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for node_id, text in texts.items():
        try:
            value = json.loads(text)
        except ValueError:
            continue  # another version's, or damaged: that node's facts are missing
        if isinstance(value, dict):
            out[node_id] = value
    return out


async def _from_bus(url: str, password: str | None) -> dict[str, Any]:
    from oplock_bus.redis_store import RedisStore

    store = RedisStore(tool_target(url, password, "status"))
    try:
        await store.start(subscriber=False)
        return await cluster_status(store)
    finally:
        await store.stop()


class StatusFailed(Exception):
    """One line for stderr; exit status 2."""


async def ask_socket(path: str) -> dict[str, Any]:
    """The document a node's admin socket gives; StatusFailed if it cannot."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 2.0)
    except FileNotFoundError:
        raise StatusFailed(f"no node socket {path}") from None
    except (OSError, TimeoutError) as e:
        why = (
            "nothing listens there (the node is not running)"
            if isinstance(e, ConnectionRefusedError)
            else getattr(e, "strerror", None) or str(e) or "timeout"
        )
        raise StatusFailed(f"cannot reach node socket {path}: {why}") from None
    try:
        writer.write(b'{"command": "status"}\n')
        await writer.drain()
        line = await asyncio.wait_for(reader.read(), SOCKET_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise StatusFailed(f"node socket {path} did not answer: {e or 'timeout'}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    try:
        answer = json.loads(line)
    except ValueError:
        raise StatusFailed(f"node socket {path} answered something else than JSON") from None
    if "error" in answer:
        raise StatusFailed(f"node socket {path}: {answer['error']}")
    document: dict[str, Any] = answer["status"]
    return document


async def _from_sockets(
    directory: str, socket_file: str | None, node: str | None
) -> dict[str, Any]:
    if socket_file is not None:
        return await ask_socket(socket_file)
    if node is not None:
        return await ask_socket(socket_path(directory, node))
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".sock"))
    except OSError as e:
        raise StatusFailed(
            f"no nodes on this host ({directory}: {e.strerror}); for a cluster, give --bus URL"
        ) from None
    documents: list[dict[str, Any]] = []
    errors = []
    for name in names:
        try:
            documents.append(await ask_socket(os.path.join(directory, name)))
        except StatusFailed as e:
            errors.append(str(e))
    if not documents:
        if errors:
            raise StatusFailed(errors[0])
        raise StatusFailed(
            f"no nodes on this host (no socket in {directory}); for a cluster, give --bus URL"
        )
    # Nodes on one Redis bus give the same cluster: one answer is enough.
    # Nodes each on its own in-process bus are separate servers.
    buses = {(d["bus"], d.get("namespace")) for d in documents}
    if len(buses) > 1 or (documents[0].get("namespace") is None and len(documents) > 1):
        ids = ", ".join(n.removesuffix(".sock") for n in names)
        raise StatusFailed(f"several separate nodes on this host ({ids}): name one with --node")
    return documents[0]


def main(
    *,
    bus: str | None,
    password: str | None,
    runtime: str | None,
    socket_file: str | None,
    node: str | None,
    as_json: bool,
) -> int:
    """Print the status; 2 with one line on stderr if it cannot be had."""
    try:
        if bus is not None:
            doc = asyncio.run(_from_bus(bus, password))
        else:
            directory, _ = runtime_dir(runtime)
            doc = asyncio.run(_from_sockets(directory, socket_file, node))
    except (ValueError, BusUnavailable, StatusFailed) as e:
        print(f"smbgw status: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render(doc))
    return 0
