"""Bus URLs for Redis, and the redis-py clients they describe.

Accepted forms (``[...]`` optional; ``s`` after ``redis`` means TLS)::

    redis[s]://[[user]:password@]host[:port][/db][?options]
    redis[s]+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?options]
    redis[s]+cluster://[[user]:password@]host:port[,host:port...][?options]

Options (query string): ``namespace`` (key and channel prefix, default
``smbgw:``), ``timeout`` (seconds a command may take before the bus counts
as unavailable, default 2), ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (``required``/``optional``/``none``),
``ssl_check_hostname`` (``true``/``false``) and, for Sentinel,
``sentinel_password`` (the Sentinels' own password, when they have one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

SCHEMES = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
DEFAULT_NAMESPACE = "smbgw:"
# Glob characters would break SCAN MATCH, braces the per-file hash tag.
_NAMESPACE_OK = re.compile(r"[A-Za-z0-9_.:/-]*")
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")

CommandClient = Redis | RedisCluster


@dataclass(frozen=True)
class RedisTarget:
    kind: str  # "single", "sentinel" or "cluster"
    hosts: tuple[tuple[str, int], ...]
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = None
    service: str | None = None  # Sentinel: the monitored master's name
    namespace: str = DEFAULT_NAMESPACE
    timeout: float = 2.0
    ssl: dict[str, Any] = field(default_factory=dict)
    sentinel_password: str | None = None

    def describe(self) -> str:
        """The URL without its secrets, for logs and error messages."""
        scheme = next(s for s, v in SCHEMES.items() if v == (self.kind, self.tls))
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        path = f"/{self.service}" if self.service else ""
        return f"{scheme}://{hosts}{path}"


_USERINFO_SECRET = re.compile(r"(//(?:[^/@:]*:)?)[^/@]+@")
_QUERY_SECRET = re.compile(r"(sentinel_password=)[^&]*")


def redact(url: str) -> str:
    """The URL with its passwords replaced by ``***``, for logs and messages."""
    def hide(m: re.Match[str]) -> str:
        # user:password@ keeps the user; a bare secret@ is all password.
        return f"{m.group(1)}***@"

    return _QUERY_SECRET.sub(r"\1***", _USERINFO_SECRET.sub(hide, url, count=1))


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and that password (None if it has none)."""
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, sep, password = userinfo.partition(":")
    if not sep:  # redis://secret@host: a bare secret is a password
        user, password = "", user
    netloc = f"{user}@{hostlist}" if user else hostlist
    return urlunsplit(parts._replace(netloc=netloc)), unquote(password) or None


def parse_url(url: str, *, password: str | None = None) -> RedisTarget:
    """Parse a bus URL; ValueError names what is wrong (the URL's secrets hidden).

    ``password``, read from a file or the environment so that it appears in
    no command line, goes with the URL; a URL that has one as well is refused.
    """
    try:
        target = _parse(url)
    except ValueError as e:
        raise ValueError(str(e).replace(repr(url), repr(redact(url)))) from None
    if password is not None:
        userinfo = urlsplit(url).netloc.rpartition("@")[0]
        if userinfo and ":" not in userinfo:
            # redis://user@host: with the password apart, a bare name is the user.
            target = replace(target, username=target.password, password=None)
        if target.password is not None:
            raise ValueError("the bus password is given twice: in the URL and apart from it")
        target = replace(target, password=password)
    return target


def _parse(url: str) -> RedisTarget:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"not a Redis bus URL: {url!r}")
    kind, tls = SCHEMES[scheme]
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = (unquote(pw) or None) if sep else None
        if not sep:  # redis://secret@host: a bare secret is a password
            username, password = None, unquote(user)
    hosts = tuple(_host_port(h, url) for h in hostlist.split(",") if h)
    if not hosts:
        raise ValueError(f"no host in bus URL {url!r}")
    if kind == "single" and len(hosts) > 1:
        raise ValueError(f"several hosts need redis+sentinel:// or redis+cluster://: {url!r}")
    segments = [s for s in parts.path.split("/") if s]
    service = None
    if kind == "sentinel":
        if not segments:
            raise ValueError(f"redis+sentinel:// needs /service_name: {url!r}")
        service = unquote(segments.pop(0))
    db = 0
    if segments:
        if len(segments) > 1 or not segments[0].isdigit():
            raise ValueError(f"bad database number in bus URL {url!r}")
        db = int(segments[0])
    if db and kind == "cluster":
        raise ValueError("Redis Cluster has only database 0")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    namespace = query.pop("namespace", DEFAULT_NAMESPACE)
    if not _NAMESPACE_OK.fullmatch(namespace):
        raise ValueError(f"namespace may use letters, digits and _.:/- only: {namespace!r}")
    timeout = float(query.pop("timeout", "2"))
    ssl: dict[str, Any] = {k: query.pop(k) for k in _SSL_OPTIONS if k in query}
    if "ssl_check_hostname" in query:
        ssl["ssl_check_hostname"] = query.pop("ssl_check_hostname").lower() in ("1", "true", "yes")
    sentinel_password = query.pop("sentinel_password", None)
    if query:
        raise ValueError(f"unknown bus URL option(s): {', '.join(sorted(query))}")
    if ssl and not tls:
        raise ValueError("ssl_* options need a rediss:// URL")
    return RedisTarget(
        kind, hosts, tls, db, username, password, service, namespace, timeout, ssl,
        sentinel_password,
    )  # fmt: skip


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, port = text, 6379
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        host, rest = text[1:end], text[end + 1 :]
        if rest.startswith(":"):
            port = int(rest[1:])
    elif ":" in text:
        host, _, p = text.rpartition(":")
        if not p.isdigit():
            raise ValueError(f"bad port in bus URL {url!r}")
        port = int(p)
    if not host:
        raise ValueError(f"empty host in bus URL {url!r}")
    return host, port


def connection_kwargs(target: RedisTarget) -> dict[str, Any]:
    """What every connection to a data node needs: credentials, TLS, timeouts."""
    kw: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": target.timeout,
        "socket_connect_timeout": min(target.timeout, 1.0),
        # One retry survives a pooled connection left stale by a Redis
        # restart; more would only delay the "bus unavailable" answer.
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if target.tls:
        kw["ssl"] = True
        kw.update(target.ssl)
    return kw


class Connector:
    """The clients one store uses: commands (lazy connections) and, for the
    subscriber, where the master or a cluster node currently is."""

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        kw = connection_kwargs(target)
        self.sentinel: Sentinel | None = None
        self.client: CommandClient
        if target.kind == "cluster":
            nodes = [ClusterNode(h, p) for h, p in target.hosts]
            self.client = RedisCluster(startup_nodes=nodes, **kw)
        elif target.kind == "sentinel":
            assert target.service is not None
            self.sentinel = _sentinel(target)
            self.client = self.sentinel.master_for(target.service, redis_class=Redis, db=target.db)
        else:
            host, port = target.hosts[0]
            self.client = Redis(host=host, port=port, db=target.db, **kw)

    async def pubsub_address(self) -> tuple[str, int]:
        """The master, or any cluster node: a PUBLISH on Redis Cluster
        reaches the subscribers of every node."""
        if self.sentinel is not None:
            assert self.target.service is not None
            host, port = await self.sentinel.discover_master(self.target.service)
            return str(host), int(port)
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
            node = self.client.get_default_node()
            return str(node.host), int(node.port)
        return self.target.hosts[0]

    def pubsub_client(self, host: str, port: int) -> Redis:
        kw = connection_kwargs(self.target)
        # The subscriber blocks for as long as nothing is published.
        kw["socket_timeout"] = None
        # RESP2: messages and confirmations arrive as plain replies (RESP3
        # would turn them into pushes that read_response holds back).
        kw["protocol"] = 2
        return Redis(host=host, port=port, db=self.target.db, **kw)

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            for s in self.sentinel.sentinels:
                await s.aclose()


def _sentinel(target: RedisTarget) -> Sentinel:
    sentinel_kw: dict[str, Any] = {
        "socket_timeout": target.timeout,
        "socket_connect_timeout": min(target.timeout, 1.0),
    }
    if target.sentinel_password is not None:
        sentinel_kw["password"] = target.sentinel_password
    if target.tls:
        sentinel_kw["ssl"] = True
        sentinel_kw.update(target.ssl)
    return Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kw, **connection_kwargs(target))
