"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

No engine runs here, so this checks what would break a `docker compose up`
before it starts: every node's command must be one the CLI accepts, with
the mounted TOML and users file, on its own address, over one shared volume.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from typing import Any

import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import Config, apply_toml, load_users
from oplock_bus.redis_url import parse_url

from .conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
NODES = sorted(
    name for name, svc in SERVICES.items()
    if svc.get("build") or str(svc.get("image", "")).startswith("smbgw")
)  # fmt: skip


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (or named volume) of each mount."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def _dockerfile() -> list[tuple[str, str]]:
    lines = []
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        raw = raw.strip()
        if raw and not raw.startswith("#"):
            word, _, rest = raw.partition(" ")
            lines.append((word.upper(), rest))
    return lines


def test_three_nodes_and_redis() -> None:
    assert len(NODES) == 3, NODES
    assert any("redis" in str(svc.get("image", "")) for svc in SERVICES.values())


def _script(service: dict[str, Any]) -> str:
    """The service's shell script, white space folded, as the container runs it."""
    return " ".join(" ".join(service["command"]).replace("$$", "$").split())


def test_three_sentinels_watch_a_master_and_its_replica() -> None:
    """Issue 13, item 4: the nodes find the master through three Sentinels
    (quorum 2), which can promote the one replica; their down-after time lets
    a switch finish before the nodes would fence (0.6 of node_ttl)."""
    sentinels = sorted(n for n, svc in SERVICES.items() if "--sentinel" in _script(svc))
    assert len(sentinels) == 3, sentinels
    replicas = [n for n, svc in SERVICES.items() if "--replicaof redis 6379" in _script(svc)]
    assert replicas == ["redis-replica"], replicas
    for name in sentinels:
        script = _script(SERVICES[name])
        assert "sentinel monitor smbgw redis 6379 2" in script
        assert "sentinel auth-user smbgw sentinel" in script
        found = re.search(r"down-after-milliseconds smbgw (\d+)", script)
        assert found, script
        # A switch takes the down-after time and about 1.3 s more (vote,
        # promotion; 2.3 s in all with 1000 ms here).
        assert int(found.group(1)) + 1500 < 0.6 * Config().node_ttl * 1000, found.group(0)
    # Replication and the Sentinels log on as users of their own.
    for name in ("redis", "redis-replica"):
        script = _script(SERVICES[name])
        assert "user replica on" in script and "user sentinel on" in script
        assert "masteruser replica" in script
    args = build_parser().parse_args(SERVICES[NODES[0]]["command"])
    cfg = Config()
    toml_host = REPO / _mounts(SERVICES[NODES[0]])[args.config]
    apply_toml(cfg, tomllib.loads(toml_host.read_text()), str(toml_host))
    target = parse_url(cfg.bus_url or "", password="from the secret")
    assert target.kind == "sentinel" and target.service == "smbgw"
    assert sorted(host for host, _ in target.hosts) == sentinels


@pytest.mark.parametrize("name", NODES)
def test_node_command_is_accepted_by_the_cli(name: str) -> None:
    service = SERVICES[name]
    entry = _entrypoint()
    argv = service["command"]
    args = build_parser().parse_args(argv)
    assert args.command == "serve"
    assert args.node_id == name
    # The mounted settings, read the way the node will read them.
    mounts = _mounts(service)
    toml_host = REPO / mounts[args.config]
    cfg = Config()
    apply_toml(cfg, tomllib.loads(toml_host.read_text()), str(toml_host))
    assert cfg.bus_url
    # Every host the URL names (Sentinels, or a plain Redis) is a service.
    target = parse_url(cfg.bus_url, password="from the secret")
    assert target.hosts and all(host in SERVICES for host, _ in target.hosts), cfg.bus_url
    # Every share lives on the one named volume all nodes mount.
    for share in cfg.shares:
        assert mounts.get(share.path) in COMPOSE["volumes"], share.path
    users_host = REPO / mounts[cfg.users_file or ""]
    assert load_users(str(users_host)), "the mounted users file has no user"
    assert entry == ["smbgw"]


def test_nodes_have_their_own_address_and_port_445() -> None:
    addresses = set()
    for name in NODES:
        args = build_parser().parse_args(SERVICES[name]["command"])
        assert args.listen.endswith(":445")
        nets = SERVICES[name]["networks"]
        addresses |= {net["ipv4_address"] for net in nets.values() if "ipv4_address" in net}
    assert len(addresses) == len(NODES)


def _entrypoint() -> list[str]:
    for word, rest in _dockerfile():
        if word == "ENTRYPOINT":
            return list(yaml.safe_load(rest))
    return []


def test_dockerfile_entrypoint_and_sources_exist() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entry = _entrypoint()
    assert entry and entry[0] in scripts, entry
    for word, rest in _dockerfile():
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (REPO / src).exists(), f"Dockerfile copies a missing {src}"
        if word == "CMD":
            args = build_parser().parse_args(yaml.safe_load(rest))
            assert args.command == "serve"


def test_redis_is_behind_the_nodes_with_the_documented_acl() -> None:
    """Clients reach the nodes, never Redis; Redis lets in only the bus's ACL
    user, the one docs/operations.md shows, whose password is a secret file."""
    redis = next(svc for svc in SERVICES.values() if "redis" in str(svc.get("image", "")))
    client_nets = {net for name in NODES for net in SERVICES[name]["networks"]
                   if "ipv4_address" in SERVICES[name]["networks"][net]}  # fmt: skip
    redis_nets = set(redis["networks"])
    assert redis_nets and not redis_nets & client_nets
    for net in redis_nets:
        assert COMPOSE["networks"][net].get("internal") is True
        assert all(net in SERVICES[name]["networks"] for name in NODES)
    # The replica and the Sentinels too: only the nodes reach them.
    for svc in SERVICES.values():
        if "redis" in str(svc.get("image", "")):
            assert set(svc["networks"]) == redis_nets, svc
    script = " ".join(redis["command"])
    assert "user default off" in script
    documented = next(
        ln.strip() for ln in (REPO / "docs" / "operations.md").read_text().splitlines()
        if ln.strip().startswith("ACL SETUSER")
    )  # fmt: skip
    rules = documented.split(">PASSWORD", 1)[1].split()
    assert " ".join(rules) in " ".join(script.split())
    secret = COMPOSE["secrets"]["bus_password"]["file"]
    assert (REPO / secret).read_text().strip()
    for name in NODES:
        service = SERVICES[name]
        assert "bus_password" in service["secrets"]
        mounts = _mounts(service)
        args = build_parser().parse_args(service["command"])
        cfg = Config()
        toml_host = REPO / mounts[args.config]
        apply_toml(cfg, tomllib.loads(toml_host.read_text()), str(toml_host))
        assert cfg.bus_url and ":" not in cfg.bus_url.split("//", 1)[1].split("@")[0]
        assert cfg.bus_password_file == "/run/secrets/bus_password"
