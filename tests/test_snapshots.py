"""Previous versions (``snapshots = "FOLDER"``, gateway/fs/snapshots.py).

The pure parts (tokens, the SRV_SNAPSHOT_ARRAY, the folder) directly; then a
node serving a tree with two snapshots, seen by pike (FSCTL_SRV_ENUMERATE_SNAPSHOTS,
CREATE with a TWrp context, MS-SMB2 2.2.13.2.7, 3.3.5.15.1), smbclient (its
``allinfo`` versions and ``@GMT-...`` paths) and smbtorture's smb2.twrp; and
two nodes on one Redis bus, where an open of a snapshot must not meet the
live file's share modes and oplocks.
"""

from __future__ import annotations

import calendar
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pike.model
import pike.ntstatus
import pike.smb2 as smb2
import pytest

from bench.samba import run_torture
from gateway.config import Config, ConfigError, apply_toml, validate
from gateway.fs import snapshots
from gateway.fs.vfs import ShareFS
from gateway.protocol.constants import NtStatusError, Status

from .conftest import PASSWORD, USER, GatewayNode, free_port, need, start_gateway
from .redis_fixtures import start_redis

OLD = "@GMT-2024.01.01-10.00.00"
NEW = "@GMT-2024.06.01-12.00.00"
READ = smb2.FILE_READ_DATA | smb2.FILE_READ_ATTRIBUTES


def filetime(token: str) -> int:
    t = time.strptime(token, snapshots.TOKEN_FORMAT)
    return calendar.timegm(t) * 10_000_000 + 116_444_736_000_000_000


# -- the pure parts ------------------------------------------------------------------


def test_tokens_parse_and_format() -> None:
    assert snapshots.parse_token(OLD) == filetime(OLD)
    assert snapshots.token_of(filetime(NEW)) == NEW
    assert snapshots.token_of(filetime(NEW) + 9_999_999) == NEW  # to the second
    bad = ["@GMT-2024.02.30-10.00.00", "@GMT-2024.01.01-24.00.00", "@GMT-2024.1.1-10.00.00"]
    for not_a_token in [*bad, "GMT-2024.01.01-10.00.00", OLD + "x"]:
        assert snapshots.parse_token(not_a_token) is None, not_a_token
    assert snapshots.token_of(2**64 - 1) is None


def test_split_token_takes_the_first_gmt_component() -> None:
    assert snapshots.split_token(f"{OLD}\\dir\\a.txt") == ("dir\\a.txt", OLD)
    assert snapshots.split_token(f"dir\\{NEW}\\a.txt") == ("dir\\a.txt", NEW)
    assert snapshots.split_token(OLD) == ("", OLD)
    assert snapshots.split_token("dir\\@GMT-x\\a.txt") == ("dir\\@GMT-x\\a.txt", None)


def test_snapshot_array_sizes() -> None:
    full = snapshots.snapshot_array([NEW, OLD], 4096)
    count, returned, size = struct.unpack_from("<III", full)
    assert (count, returned, size) == (2, 2, 2 * 25 * 2 + 2)
    assert full[12:].decode("utf-16-le") == f"{NEW}\0{OLD}\0\0"
    # Too small for the array: the counts and the size needed, 16 bytes.
    for max_out in (16, 12 + size - 1):
        short = snapshots.snapshot_array([NEW, OLD], max_out)
        assert struct.unpack_from("<III", short) == (2, 0, size) and len(short) == 16
    with pytest.raises(NtStatusError) as e:
        snapshots.snapshot_array([NEW], 15)
    assert e.value.status == Status.INVALID_PARAMETER
    assert struct.unpack_from("<III", snapshots.snapshot_array([], 16)) == (0, 0, 2)


def test_folder_lists_newest_first_and_hides_itself(tmp_path: Path) -> None:
    share = tmp_path / "share"
    for name in (OLD, NEW, "@GMT-2023.12.31-23.59.59", "not-a-snapshot"):
        (share / ".snaps" / name).mkdir(parents=True)
    (share / ".snaps" / "@GMT-2025.01.01-00.00.00").write_text("a file, not a snapshot")
    live = ShareFS(str(share), volume_id=0x5EED)
    snaps = snapshots.Snapshots(live, ".snaps")
    assert snaps.tokens() == [NEW, OLD, "@GMT-2023.12.31-23.59.59"]
    version = snaps.version(OLD)
    assert version is not None and version.fs.root == str(share / ".snaps" / OLD)
    # Its files are not the live ones, on every node alike.
    assert version.fs.volume_id == snapshots.snapshot_volume_id(0x5EED, OLD) != 0x5EED
    assert snaps.version("@GMT-2020.01.01-00.00.00") is None
    assert snaps.hidden_names(str(share)) == {".snaps"}
    assert snaps.hidden_names(str(share / ".snaps" / OLD)) == {".."}
    assert snaps.hidden_names(str(share / ".snaps" / OLD / "dir")) == set()
    assert snapshots.Snapshots(live, "/nonexistent").tokens() == []


def test_config_snapshots_setting(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    cfg = Config()
    apply_toml(cfg, {"shares": [{"name": "s", "path": str(share), "snapshots": ".snaps"}]}, "t")
    assert cfg.shares[0].snapshots == ".snaps"
    validate(cfg_with_guest(cfg))  # a folder not there yet is fine
    with pytest.raises(ConfigError, match="snapshots = 5: expected a folder"):
        apply_toml(Config(), {"shares": [{"name": "s", "path": str(share), "snapshots": 5}]}, "t")
    (share / ".snaps").write_text("")
    with pytest.raises(ConfigError, match=r"share s: snapshots = .*\.snaps: not a directory"):
        validate(cfg_with_guest(cfg))


def cfg_with_guest(cfg: Config) -> Config:
    from dataclasses import replace

    cfg.shares = [replace(s, guest_ok=True) for s in cfg.shares]
    return cfg


# -- one node ------------------------------------------------------------------------


def make_tree(share: Path) -> None:
    """The live tree and two snapshots of it, each a copy with its own contents."""
    share.mkdir(parents=True, exist_ok=True)
    (share / "file.txt").write_text("live")
    (share / "dir").mkdir()
    (share / "dir" / "a.txt").write_text("live a")
    for token in (OLD, NEW):
        root = share / ".snapshots" / token
        (root / "dir").mkdir(parents=True)
        (root / "file.txt").write_text(f"file at {token}")
        (root / "dir" / "a.txt").write_text(f"a at {token}")


def write_config(work: Path, share: Path, listen: str, *, bus: str | None = None,
                 node_id: str | None = None) -> Path:  # fmt: skip
    users = work / "users"
    users.write_text(f"{USER}:{PASSWORD}\n")
    lines = [f'listen = "{listen}"', f'users = "{users}"', "break_timeout = 10"]
    if bus:
        lines += [f'bus = "{bus}"', f'node_id = "{node_id}"', "node_ttl = 3"]
    lines += ["[[shares]]", 'name = "share"', f'path = "{share}"', 'snapshots = ".snapshots"']
    path = work / f"{node_id or 'node'}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayNode]:
    work = tmp_path_factory.mktemp("snap")
    share = work / "share"
    make_tree(share)
    port = free_port()
    config = write_config(work, share, f"127.0.0.1:{port}")
    gw = start_gateway(work, port=port, share_dir=share, flags=False,
                       extra=["--config", str(config)])  # fmt: skip
    yield gw
    assert gw.stop() == 0, gw.log()[-3000:]
    assert "Traceback" not in gw.log(), gw.log()[-4000:]


class Pike:
    """One pike connection, session and tree."""

    def __init__(self, host: str, port: int) -> None:
        self.client = pike.model.Client()
        self.conn = self.client.connect(host, port).negotiate()
        self.chan = self.conn.session_setup(f"{USER}%{PASSWORD}")
        self.tree = self.chan.tree_connect("share")

    def open(self, name: str, timewarp: str | None = None, **kw: Any) -> Any:
        kw.setdefault("access", READ)
        kw.setdefault("disposition", smb2.FILE_OPEN)
        kw.setdefault("share", smb2.FILE_SHARE_READ | smb2.FILE_SHARE_WRITE
                      | smb2.FILE_SHARE_DELETE)  # fmt: skip
        tw = filetime(timewarp) if timewarp else None
        return self.chan.create(self.tree, name, timewarp=tw, **kw).result()

    def status_of(self, name: str, timewarp: str | None = None, **kw: Any) -> int:
        try:
            self.chan.close(self.open(name, timewarp, **kw))
        except pike.model.ResponseError as e:
            return int(e.response.status)
        return int(Status.SUCCESS)

    def read_all(self, name: str, timewarp: str | None = None) -> bytes:
        h = self.open(name, timewarp)
        try:
            return bytes(self.chan.read(h, 4096, 0).tobytes())
        finally:
            self.chan.close(h)

    def names(self, name: str, timewarp: str | None = None) -> list[str]:
        h = self.open(name, timewarp, options=smb2.FILE_DIRECTORY_FILE)
        try:
            return sorted(i.file_name for i in self.chan.query_directory(h))
        finally:
            self.chan.close(h)

    def enumerate(self, name: str, max_out: int) -> tuple[int, int, int, list[str]]:
        h = self.open(name)
        try:
            req = self.chan.enumerate_snapshots_request(h, max_output_response=max_out)
            out = self.conn.transceive(req.parent.parent.parent)[0][0].ioctl_output
            return (out.number_of_snapshots, out.number_of_snapshots_returned,
                    out.snapshot_array_size, out.snapshots)  # fmt: skip
        finally:
            self.chan.close(h)

    def close(self) -> None:
        self.chan.logoff()
        self.conn.close()


@pytest.fixture
def client(node: GatewayNode, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pike]:
    # pike reads the whole array whatever OutputCount says; the 16-byte answer
    # (counts only) must decode too.
    def decode(self: Any, cur: Any) -> None:
        self.number_of_snapshots = cur.decode_uint32le()
        self.number_of_snapshots_returned = cur.decode_uint32le()
        self.snapshot_array_size = cur.decode_uint32le()
        rest = self.parent.output_count - 12
        raw = bytes(cur.decode_bytes(rest)) if rest > 0 else b""
        self.snapshots = [s for s in raw.decode("utf-16-le").split("\0") if s]

    monkeypatch.setattr(smb2.EnumerateSnapshotsResponse, "_decode", decode)
    c = Pike(node.host, node.port)
    yield c
    c.close()


def test_enumerate_lists_newest_first(client: Pike) -> None:
    size = 2 * 25 * 2 + 2
    assert client.enumerate("", 4096) == (2, 2, size, [NEW, OLD])
    assert client.enumerate("dir\\a.txt", 4096) == (2, 2, size, [NEW, OLD])
    # Room for the counts only: how many, and the size to ask for next time.
    assert client.enumerate("file.txt", 16) == (2, 0, size, [])
    assert client.enumerate("file.txt", 64) == (2, 0, size, [])


def test_timewarp_opens_the_old_contents(client: Pike, node: GatewayNode) -> None:
    assert client.read_all("file.txt", OLD) == f"file at {OLD}".encode()
    assert client.read_all("dir\\a.txt", NEW) == f"a at {NEW}".encode()
    assert client.read_all("file.txt") == b"live"
    # The same through a @GMT component of the path.
    assert client.read_all(f"{OLD}\\dir\\a.txt") == f"a at {OLD}".encode()
    assert client.read_all(f"dir\\{NEW}\\a.txt") == f"a at {NEW}".encode()
    h = client.open("file.txt", OLD)
    info = client.chan.query_file_info(h, smb2.FILE_STANDARD_INFORMATION, first_result_only=True)
    client.chan.close(h)
    assert info.end_of_file == len(f"file at {OLD}")


def test_snapshot_is_read_only(client: Pike, node: GatewayNode) -> None:
    # Let in with write access, as smbd lets it in; the write itself is refused.
    h = client.open("file.txt", OLD, access=READ | smb2.FILE_WRITE_DATA)
    with pytest.raises(pike.model.ResponseError) as e:
        client.chan.write(h, 0, b"changed")
    assert e.value.response.status == pike.ntstatus.STATUS_MEDIA_WRITE_PROTECTED
    client.chan.close(h)
    protected = pike.ntstatus.STATUS_MEDIA_WRITE_PROTECTED
    assert client.status_of("file.txt", OLD, disposition=smb2.FILE_OVERWRITE_IF) == protected
    assert client.status_of("file.txt", OLD, access=READ | smb2.DELETE,
                            options=smb2.FILE_DELETE_ON_CLOSE) == protected  # fmt: skip
    assert client.status_of(f"{OLD}\\file.txt", access=smb2.FILE_WRITE_DATA,
                            disposition=smb2.FILE_SUPERSEDE) == protected  # fmt: skip
    snap = node.share_dir / ".snapshots" / OLD
    assert (snap / "file.txt").read_text() == f"file at {OLD}"
    # A name the snapshot has not: not found, and nothing is made.
    missing = pike.ntstatus.STATUS_OBJECT_NAME_NOT_FOUND
    assert client.status_of("new.txt", OLD, disposition=smb2.FILE_OPEN_IF) == missing
    assert client.status_of("new.txt", OLD, disposition=smb2.FILE_CREATE) == missing
    assert not (snap / "new.txt").exists() and not (node.share_dir / "new.txt").exists()


def test_time_without_snapshot_is_not_found(client: Pike) -> None:
    # What smbd answers: the name is looked for in a tree that is not there.
    none = "@GMT-2024.01.01-10.00.01"
    assert client.status_of("file.txt", none) == pike.ntstatus.STATUS_OBJECT_NAME_NOT_FOUND
    assert client.status_of("dir\\a.txt", none) == pike.ntstatus.STATUS_OBJECT_PATH_NOT_FOUND
    assert client.status_of(f"{none}\\file.txt") == pike.ntstatus.STATUS_OBJECT_NAME_NOT_FOUND


def test_listings(client: Pike) -> None:
    assert client.names("") == [".", "..", "dir", "file.txt"]  # the folder is hidden
    assert client.names("", OLD) == [".", "dir", "file.txt"]  # no way up into the folder
    assert client.names("dir", NEW) == [".", "..", "a.txt"]
    assert client.names(".snapshots") == [".", "..", OLD, NEW]  # by name, as on smbd


def test_smbclient_sees_previous_versions(node: GatewayNode, tmp_path: Path) -> None:
    smbclient = need("smbclient")
    got = tmp_path / "old.txt"
    cmds = f'allinfo file.txt; get "{OLD}\\file.txt" {got}'
    out = subprocess.run(
        [smbclient, f"//{node.host}/share", "-p", str(node.port), "-U", f"{USER}%{PASSWORD}",
         "-c", cmds], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    versions = [line for line in out.stdout.splitlines() if line.startswith("@GMT-")]
    assert versions == [NEW, OLD]
    assert got.read_text() == f"file at {OLD}"


@pytest.mark.torture
def test_smbtorture_twrp(tmp_path: Path) -> None:
    """smb2.twrp with Samba's own selftest layout: foo with a stream, and a
    hard link the snapshot shares with the live tree (same inode)."""
    need("smbtorture")
    share = tmp_path / "share"
    share.mkdir()
    port = free_port()
    config = write_config(tmp_path, share, f"127.0.0.1:{port}")
    gw = start_gateway(tmp_path, port=port, share_dir=share, flags=False,
                       extra=["--config", str(config)])  # fmt: skip
    token = "@GMT-2015.10.31-19.40.30"
    try:
        (share / "foo").write_text("hello\n")
        (share / "subdir").mkdir()
        (share / "subdir" / "hardlink").touch()
        c = Pike(gw.host, gw.port)
        h = c.open("foo:bar", access=smb2.FILE_WRITE_DATA, disposition=smb2.FILE_CREATE)
        c.chan.write(h, 0, b"baz")
        c.chan.close(h)
        c.close()
        snap = share / ".snapshots" / token
        (snap / "subdir").mkdir(parents=True)
        shutil.copy2(share / "foo", snap / "foo")
        for name in os.listxattr(share / "foo"):  # the stream's id, as a snapshot keeps it
            os.setxattr(snap / "foo", name, os.getxattr(share / "foo", name))
        shutil.copytree(share / ".smbgw:streams", snap / ".smbgw:streams")
        os.link(share / "subdir" / "hardlink", snap / "subdir" / "hardlink")
        opts = [f"--option=torture:{k}" for k in
                ("twrp_file=foo", "twrp_stream=bar", "twrp_stream_size=3",
                 f"twrp_snapshot={token}")]  # fmt: skip
        run = run_torture([gw.host], "smb2.twrp", port, tmp_path / "out", extra=opts)
    finally:
        rc = gw.stop()
    log = run.log.read_text(errors="replace")
    assert run.results == {
        f"smb2.twrp.{t}": "success" for t in ("write", "stream", "openroot", "listdir")
    }, log[-3000:]
    assert rc == 0 and "Traceback" not in gw.log(), gw.log()[-3000:]


# -- two nodes -----------------------------------------------------------------------


def test_snapshot_opens_stay_off_the_live_files_share_modes(tmp_path: Path) -> None:
    """Node 1 holds the live file exclusively with a batch oplock; through
    node 2 its previous versions open (no sharing violation) and node 1's
    client gets no break, while an open of the live file breaks it and is
    refused. Opens of one snapshot meet each other's share modes across
    nodes, as any file's do."""
    redis = start_redis(tmp_path / "redis")
    share = tmp_path / "share"
    make_tree(share)
    port = free_port()
    bus = f"redis://127.0.0.1:{redis.port}/0"
    # As on btrfs or ZFS, an unchanged file keeps its inode number in a snapshot.
    same_inode = share / ".snapshots" / NEW / "file.txt"
    same_inode.unlink()
    os.link(share / "file.txt", same_inode)
    nodes = []
    try:
        for i, host in enumerate(("127.0.0.1", "127.0.0.2"), 1):
            config = write_config(tmp_path, share, f"{host}:{port}", bus=bus, node_id=f"n{i}")
            nodes.append(start_gateway(tmp_path / f"n{i}", host=host, port=port,
                                       share_dir=share, flags=False,
                                       extra=["--config", str(config)]))  # fmt: skip
        one, two = Pike("127.0.0.1", port), Pike("127.0.0.2", port)
        held = one.open("file.txt", access=READ | smb2.FILE_WRITE_DATA, share=0,
                        oplock_level=smb2.SMB2_OPLOCK_LEVEL_BATCH)  # fmt: skip
        assert held.oplock_level == smb2.SMB2_OPLOCK_LEVEL_BATCH
        brk = one.client.oplock_break_future(held.file_id)
        assert two.read_all("file.txt", OLD) == f"file at {OLD}".encode()
        assert two.read_all("file.txt", NEW) == b"live"
        assert two.enumerate("", 4096)[3] == [NEW, OLD]
        # The snapshot's file has an identity of its own, the same on both nodes.
        old = one.open("file.txt", OLD, share=0)
        assert two.status_of("file.txt", OLD) == pike.ntstatus.STATUS_SHARING_VIOLATION
        assert two.read_all("file.txt", NEW) == b"live"
        one.chan.close(old)
        one.chan.echo()  # a round trip: a break sent before it has arrived by now
        assert brk.response is None, "an open of a snapshot broke the live file's oplock"
        # The live file itself: broken, then refused (share mode).
        live = two.chan.create(two.tree, "file.txt", access=READ, share=7,
                               disposition=smb2.FILE_OPEN)  # fmt: skip
        notice = brk.wait(timeout=10).result()
        one.conn.transceive(one.chan.oplock_break_acknowledgement(held, notice).parent.parent)
        with pytest.raises(pike.model.ResponseError) as e:
            live.result()
        assert e.value.response.status == pike.ntstatus.STATUS_SHARING_VIOLATION
        one.chan.close(held)
        one.close()
        two.close()
    finally:
        for n in nodes:
            n.stop()
        redis.stop()
    for n in nodes:
        assert "Traceback" not in n.log(), n.log()[-3000:]
