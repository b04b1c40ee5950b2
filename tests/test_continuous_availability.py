"""Continuously available shares (issue 12, item 1): what a node advertises.

A share with ``continuous_availability = true`` (or every share, with ``serve
--ca`` / ``cluster up --ca``) answers TREE_CONNECT with
SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY for SMB 3.x, plus SCALEOUT and CLUSTER
when the node runs on a shared bus; the node then advertises
SMB2_GLOBAL_CAP_PERSISTENT_HANDLES at NEGOTIATE for 3.x. smbprotocol, a client
written apart from the gateway, reads the bits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from smbprotocol import Dialects
from smbprotocol.connection import Capabilities, Connection
from smbprotocol.session import Session
from smbprotocol.tree import (
    ShareCapabilities,
    SMB2TreeConnectRequest,
    SMB2TreeConnectResponse,
    TreeConnect,
)

from gateway.cli import build_config, build_parser, cluster_spec
from gateway.cluster import ClusterSpec, LocalCluster
from gateway.config import Config, ConfigError, ShareConfig, apply_toml
from gateway.protocol.constants import Dialect
from gateway.smb.handlers.negotiate import node_capabilities
from gateway.smb.handlers.tree import on_shared_bus, share_capabilities
from oplock_bus import make_bus

from .conftest import PASSWORD, USER, GatewayNode, free_port, start_gateway, write_users
from .test_cli import assert_one_line_error, serve

CA = ShareCapabilities.SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY
SCALEOUT = ShareCapabilities.SMB2_SHARE_CAP_SCALEOUT
CLUSTER = ShareCapabilities.SMB2_SHARE_CAP_CLUSTER
PERSISTENT = Capabilities.SMB2_GLOBAL_CAP_PERSISTENT_HANDLES
SMB3 = [Dialects.SMB_3_0_2, Dialects.SMB_3_1_1]


# -- the client side ---------------------------------------------------------------


class Probe:
    """One logged-on smbprotocol session on ``dialect``."""

    def __init__(self, host: str, port: int, dialect: int) -> None:
        self.host = host
        self.conn = Connection(uuid.uuid4(), host, port)
        self.conn.connect(dialect=dialect)
        self.session = Session(
            self.conn, USER, PASSWORD, require_encryption=False, auth_protocol="ntlm"
        )
        self.session.connect()

    @property
    def persistent_handles(self) -> bool:
        return bool(self.conn.server_capabilities.has_flag(PERSISTENT))

    def share_caps(self, share: str) -> int:
        """TREE_CONNECT's raw Capabilities (smbprotocol keeps only some bits)."""
        req = SMB2TreeConnectRequest()
        req["buffer"] = rf"\\{self.host}\{share}".encode("utf-16-le")
        sent = self.conn.send(req, sid=self.session.session_id)
        resp = SMB2TreeConnectResponse()
        resp.unpack(self.conn.receive(sent)["data"].get_value())
        return int(resp["capabilities"].get_value())

    def is_ca_share(self, share: str) -> bool:
        """smbprotocol's own reading, after its secure-negotiate check (3.0.x),
        which the new NEGOTIATE bit must still pass."""
        tree = TreeConnect(self.session, rf"\\{self.host}\{share}")
        tree.connect()
        return bool(tree.is_ca_share)

    def close(self) -> None:
        self.conn.disconnect()


@contextmanager
def probe(host: str, port: int, dialect: int) -> Iterator[Probe]:
    p = Probe(host, port, dialect)
    try:
        yield p
    finally:
        p.close()


# -- a node with one CA share and one plain share, on the embedded bus -------------


@pytest.fixture(scope="module")
def ca_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    tmp = tmp_path_factory.mktemp("ca")
    (tmp / "ca").mkdir()
    (tmp / "plain").mkdir()
    port = free_port()
    conf = tmp / "gw.toml"
    conf.write_text(
        f'listen = "127.0.0.1:{port}"\nusers = "{write_users(tmp / "users")}"\n'
        f'[[shares]]\nname = "ca"\npath = "{tmp / "ca"}"\ncontinuous_availability = true\n'
        f'[[shares]]\nname = "plain"\npath = "{tmp / "plain"}"\n'
    )
    node = start_gateway(tmp / "gw", port=port, extra=["--config", str(conf)], flags=False)
    yield node
    assert node.stop() == 0, node.log()[-4000:]
    assert "Traceback" not in node.log(), node.log()[-4000:]


@pytest.mark.parametrize("dialect", SMB3, ids=["3.0.2", "3.1.1"])
def test_a_ca_share_is_advertised_on_smb3(ca_node: GatewayNode, dialect: int) -> None:
    with probe(ca_node.host, ca_node.port, dialect) as p:
        assert p.persistent_handles
        # The embedded bus: no other node could take the handles over.
        assert p.share_caps("ca") == CA
        assert p.is_ca_share("ca")


@pytest.mark.parametrize("dialect", SMB3, ids=["3.0.2", "3.1.1"])
def test_a_plain_share_beside_it_is_not(ca_node: GatewayNode, dialect: int) -> None:
    with probe(ca_node.host, ca_node.port, dialect) as p:
        assert p.share_caps("plain") == 0
        assert not p.is_ca_share("plain")


def test_smb2_1_gets_neither(ca_node: GatewayNode) -> None:
    with probe(ca_node.host, ca_node.port, Dialects.SMB_2_1_0) as p:
        assert not p.persistent_handles
        assert p.share_caps("ca") == 0


def test_a_node_without_ca_shares_offers_no_persistent_handles(
    module_gateway: GatewayNode,
) -> None:
    with probe(module_gateway.host, module_gateway.port, Dialects.SMB_3_1_1) as p:
        assert not p.persistent_handles
        assert p.share_caps("share") == 0


# -- `cluster up --ca`: a node on a shared (Redis) bus ------------------------------


@pytest.fixture(scope="module")
def ca_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("ca-cluster")
    (tmp / "share").mkdir()
    spec = ClusterSpec(
        nodes=1,
        port=free_port(),
        shares=[f"share={tmp / 'share'}"],
        users=str(write_users(tmp / "users")),
        continuous_availability=True,
        log_dir=tmp / "logs",
    )
    cluster = LocalCluster(spec)
    cluster.start()
    yield cluster
    cluster.stop()
    for node in cluster.nodes:
        assert node.log_path is not None
        assert "Traceback" not in node.log_path.read_text(), node.log_path


def test_a_clustered_ca_share_is_scaleout_and_cluster(ca_cluster: LocalCluster) -> None:
    host, port = ca_cluster.endpoints[0]
    with probe(host, port, Dialects.SMB_3_1_1) as p:
        assert p.persistent_handles
        assert p.share_caps("share") == CA | SCALEOUT | CLUSTER


# -- the decisions, without a node ---------------------------------------------------


def test_share_capabilities() -> None:
    ca = ShareConfig("ca", "/x", continuous_availability=True)
    plain = ShareConfig("plain", "/x")
    assert share_capabilities(ca, Dialect.SMB3_0, shared_bus=False) == CA
    assert share_capabilities(ca, Dialect.SMB3_1_1, shared_bus=True) == CA | SCALEOUT | CLUSTER
    assert share_capabilities(ca, Dialect.SMB2_1, shared_bus=True) == 0
    assert share_capabilities(plain, Dialect.SMB3_1_1, shared_bus=True) == 0


def test_only_a_redis_bus_counts_as_shared() -> None:
    assert not on_shared_bus(make_bus(None))
    assert not on_shared_bus(make_bus("memory://"))
    # Nothing connects before start(): the URL need not lead anywhere.
    assert on_shared_bus(make_bus("redis://127.0.0.1:1/0"))


def test_persistent_handles_only_for_smb3_with_a_ca_share() -> None:
    cfg = Config(shares=[ShareConfig("a", "/x"), ShareConfig("b", "/y")], multichannel=False)
    assert node_capabilities(cfg, Dialect.SMB3_1_1) == 0
    cfg.shares[1] = ShareConfig("b", "/y", continuous_availability=True)
    assert node_capabilities(cfg, Dialect.SMB3_0) == PERSISTENT
    assert node_capabilities(cfg, Dialect.SMB2_1) == 0


# -- configuration ----------------------------------------------------------------


def test_toml_share_key() -> None:
    cfg = Config()
    apply_toml(
        cfg,
        {
            "shares": [
                {"name": "a", "path": "/a", "continuous_availability": True},
                {"name": "b", "path": "/b"},
            ]
        },
        "gw.toml",
    )
    assert [s.continuous_availability for s in cfg.shares] == [True, False]
    assert cfg.any_continuously_available


@pytest.mark.parametrize("value", ["yes", "false", 1])
def test_a_bad_value_is_one_line_naming_share_and_key(value: object) -> None:
    entry = {"name": "a", "path": "/a", "continuous_availability": value}
    with pytest.raises(ConfigError) as info:
        apply_toml(Config(), {"shares": [entry]}, "gw.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("gw.toml: share a: continuous_availability = ")
    assert "expected true or false" in message


def test_a_bad_value_stops_serve_with_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    conf.write_text(
        f'[[shares]]\nname = "a"\npath = "{tmp_path}"\ncontinuous_availability = "no"\n'
    )
    assert_one_line_error(serve("--config", str(conf)), 'continuous_availability = "no"')


def test_serve_ca_makes_every_share_ca(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[[shares]]\nname = "fromtoml"\npath = "{tmp_path}"\n')
    users = write_users(tmp_path / "users")
    argv = ["serve", "--config", str(conf), "--share", f"flag={tmp_path}", "--users", str(users)]
    assert not build_config(build_parser().parse_args(argv)).any_continuously_available
    cfg = build_config(build_parser().parse_args([*argv, "--ca"]))
    assert [(s.name, s.continuous_availability) for s in cfg.shares] == [
        ("fromtoml", True),
        ("flag", True),
    ]


def test_cluster_up_ca_reaches_the_spec() -> None:
    argv = ["cluster", "up", "--share", "s=/x", "--users", "u"]
    assert not cluster_spec(build_parser().parse_args(argv)).continuous_availability
    assert cluster_spec(build_parser().parse_args([*argv, "--ca"])).continuous_availability
