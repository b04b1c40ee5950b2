"""Samba, the reference the tests and benchmarks compare the gateway with.

* ``Smbd(work, port)``: one private smbd, share ``[share]`` at ``work/share``;
* ``CtdbCluster(work, nodes, port)``: clustered Samba, a ctdbd and an smbd per
  node, node i on 127.0.0.(i+1), all exporting ``work/share``;
* ``run_torture(hosts, suite, port, outdir)``: one smbtorture suite (or test),
  its connections spread over ``hosts`` (``--unclist``), outcome per test.

Everything comes from Debian's packages (scripts/install.sh installs samba,
samba-vfs-modules, samba-testsuite and ctdb). Nothing is started as a
service: each server runs in a session of its own, with its own smb.conf and
state directories and the user test/test, and is stopped by the process
groups it recorded in ``work/**/*.pgid``. Starting one needs root (smbd
switches to the user; CTDB's nodes need loopback aliases). From a shell:

    python -m bench.samba smbd DIR --port 4452            # //127.0.0.1/share
    python -m bench.samba ctdb DIR --nodes 2 --port 4454  # //127.0.0.1/share, //127.0.0.2/share
    python -m bench.samba stop DIR
    python -m bench.samba torture smb2.oplock --port 4452 [--host 127.0.0.1 --host 127.0.0.2]
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

USER, PASSWORD = "test", "test"
SHARE = "share"
_STATE_DIRS = ("lock", "state", "cache", "private", "pid", "log", "ncalrpc")


def node_address(index: int) -> str:
    return f"127.0.0.{index + 1}"


def default_vfs_objects() -> str:
    """``acl_xattr streams_xattr`` where samba-vfs-modules is installed, else none."""
    out = _run(["smbd", "-b"]).stdout
    found = re.search(r"^\s*MODULESDIR:\s*(\S+)", out, re.M)
    mods = ("acl_xattr", "streams_xattr")
    if found and all((Path(found[1]) / "vfs" / f"{m}.so").exists() for m in mods):
        return " ".join(mods)
    return ""


def _need(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        raise RuntimeError(f"not installed: {' '.join(missing)} (bash scripts/install.sh)")


def _run(
    cmd: Sequence[str], *, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, input=input, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def _ensure_user() -> None:
    """tdbsam users need a Unix account."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        _run(["useradd", "-M", "-s", "/usr/sbin/nologin", USER])


def _set_password(conf: Path) -> None:
    _run(["smbpasswd", "-c", str(conf), "-s", "-a", USER], input=f"{PASSWORD}\n{PASSWORD}\n")


def _loopback_alias(address: str) -> None:
    """Samba binds only addresses an interface has (a Python socket binds any 127/8)."""
    if f"inet {address}/" not in _run(["ip", "-4", "addr", "show", "dev", "lo"]).stdout:
        _run(["ip", "addr", "add", f"{address}/8", "dev", "lo"])


def smb_conf(
    state: Path,
    share: Path,
    port: int,
    interfaces: Sequence[str],
    *,
    vfs_objects: str,
    ctdbd_socket: Path | None = None,
    share_params: Sequence[str] = (),
) -> Path:
    """Write and check ``state/smb.conf``, the settings of Samba's own test setup;
    ``share_params`` are more ``key = value`` lines for the share."""
    for d in _STATE_DIRS:
        (state / d).mkdir(parents=True, exist_ok=True)
    (state / "private").chmod(0o700)
    cluster = f"clustering = yes\n    ctdbd socket = {ctdbd_socket}" if ctdbd_socket else ""
    extra = "".join(f"    {line}\n" for line in share_params)
    conf = state / "smb.conf"
    conf.write_text(f"""[global]
    {cluster}
    netbios name = SAMBAREF
    workgroup = WORKGROUP
    server role = standalone server
    security = user
    passdb backend = tdbsam
    map to guest = never
    private dir = {state}/private
    lock directory = {state}/lock
    state directory = {state}/state
    cache directory = {state}/cache
    pid directory = {state}/pid
    ncalrpc dir = {state}/ncalrpc
    log file = {state}/log/log.%m
    max log size = 0
    log level = 1
    smb ports = {port}
    interfaces = {" ".join(interfaces)}
    bind interfaces only = yes
    disable netbios = yes
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    server min protocol = SMB2_02
    # Durable handles and predictable oplocks and leases:
    kernel oplocks = no
    kernel share modes = no
    posix locking = no
    smb2 leases = yes
    # smbd's own notifyd, not inotify (which adds and reorders events), as selftest:
    kernel change notify = no
    ea support = yes
    store dos attributes = yes
    # Test-only hook smbtorture uses to make the server stop acking breaks (batch22b):
    smbd:FSCTL_SMBTORTURE = yes

[{SHARE}]
    path = {share}
    read only = no
    guest ok = no
    vfs objects = {vfs_objects}
{extra}""")
    _run(["testparm", "-s", str(conf)])
    return conf


# -- processes, each the leader of its own process group ------------------------------


def _spawn(cmd: Sequence[str], pgid_file: Path, log: Path, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)  # fmt: skip
    pgid_file.write_text(f"{proc.pid}\n")
    return proc


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state != "Z":
                members.append(int(stat.parent.name))
    return members


def _stop_group(pgid_file: Path, timeout: float = 5) -> None:
    """SIGTERM the recorded group, SIGKILL what is left after ``timeout``."""
    try:
        pgid = int(pgid_file.read_text())
    except (OSError, ValueError):
        return
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _group_members(pgid) and time.monotonic() < deadline:
            with suppress(ChildProcessError):
                os.waitpid(pgid, os.WNOHANG)  # reap our own child
            time.sleep(0.1)
        if _group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
    with suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    pgid_file.unlink(missing_ok=True)


def stop(work: Path) -> None:
    """Stop whatever was started in ``work``: every smbd first, then every ctdbd."""
    for f in sorted(work.rglob("*.pgid"), key=lambda p: (p.name == "ctdbd.pgid", str(p))):
        _stop_group(f)
    _stop_rpc_helpers(work)


def _stop_rpc_helpers(work: Path) -> None:
    """smbd 4.17 starts samba-dcerpcd (and its rpcd_* workers) for the first pipe
    opened, in a session of its own: stopping smbd's process group leaves them.
    They are found by the configuration file they were given, under ``work``."""
    mark = f"--configfile={work.resolve()}/".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        with suppress(OSError, ValueError):
            if any(arg.startswith(mark) for arg in (proc / "cmdline").read_bytes().split(b"\0")):
                os.kill(int(proc.name), signal.SIGTERM)


def _wait_listening(address: str, port: int, proc: subprocess.Popen[bytes], log: Path,
                    timeout: float = 30) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"smbd exited {proc.returncode}; see {log}:\n{_tail(log)}")
        with suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {address}:{port} after {timeout} s; see {log}")


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class _Server:
    """What Smbd and CtdbCluster share: the share, stop, and use as a context manager."""

    work: Path
    port: int
    _procs: list[subprocess.Popen[bytes]]

    @property
    def share(self) -> Path:
        return self.work / SHARE

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        raise NotImplementedError

    def _prepare(self, *binaries: str) -> None:
        _need("smbd", "smbpasswd", "testparm", *binaries)
        self.work.mkdir(parents=True, exist_ok=True)
        self.share.mkdir(exist_ok=True)
        self.share.chmod(0o777)  # smbd writes as user test
        _ensure_user()

    def _spawn(self, cmd: list[str], pgid_file: Path, log: Path,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        self._procs.append(_spawn(cmd, pgid_file, log, env))
        return self._procs[-1]

    def stop(self) -> None:
        stop(self.work)
        for proc in self._procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()


@dataclass
class Smbd(_Server):
    """One smbd on ``interfaces`` (each must exist on lo), share at ``work/share``."""

    work: Path
    port: int = 445
    interfaces: tuple[str, ...] = ("127.0.0.1",)
    vfs_objects: str | None = None  # None: default_vfs_objects()
    share_params: tuple[str, ...] = ()  # more "key = value" lines (e.g. shadow:snapdir)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False, repr=False)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(self.interfaces[0], self.port)]

    def start(self) -> Smbd:
        self._prepare()
        vfs = default_vfs_objects() if self.vfs_objects is None else self.vfs_objects
        conf = smb_conf(self.work, self.share, self.port, self.interfaces, vfs_objects=vfs,
                        share_params=self.share_params)  # fmt: skip
        _set_password(conf)
        log = self.work / "log" / "smbd.out"
        proc = self._spawn(["smbd", "--foreground", "--no-process-group", "-s", str(conf)],
                           self.work / "smbd.pgid", log)  # fmt: skip
        try:
            for address in self.interfaces:
                _wait_listening(address, self.port, proc, log)
        except BaseException:
            self.stop()
            raise
        return self


@dataclass
class CtdbCluster(_Server):
    """Clustered Samba on one machine, as Samba's ctdb/tests/local_daemons.sh runs it
    (CTDB_TEST_MODE, a CTDB_BASE per node), without public addresses or failover."""

    work: Path
    nodes: int = 2
    port: int = 445
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False, repr=False)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(node_address(i), self.port) for i in range(self.nodes)]

    def base(self, i: int) -> Path:
        return self.work / f"node.{i}"

    def ctdb(self, i: int, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``ctdb ARGS`` against node i, e.g. ``ctdb(0, "status")``."""
        env = dict(os.environ, CTDB_TEST_MODE="yes", CTDB_BASE=str(self.base(i)))
        return subprocess.run(["ctdb", *args], env=env, capture_output=True, text=True,
                              timeout=30)  # fmt: skip

    def start(self) -> CtdbCluster:
        self._prepare("ctdbd", "ctdb", "ip")
        addresses = [address for address, _ in self.endpoints]
        for address in addresses:
            _loopback_alias(address)
        try:
            self._start_ctdbds(addresses)
            self._start_smbds(addresses)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_ctdbds(self, addresses: list[str]) -> None:
        nodes = "".join(f"{a}\n" for a in addresses)
        ctdbds = []
        for i, address in enumerate(addresses):
            b = self.base(i)
            for d in ("run", "events/legacy", "db/volatile", "db/persistent", "db/state"):
                (b / d).mkdir(parents=True, exist_ok=True)
            (b / "nodes").write_text(nodes)
            (b / "public_addresses").write_text("")
            (b / "ctdb.conf").write_text(f"""[logging]
    location = file:{b}/log.ctdb
    log level = NOTICE
[cluster]
    cluster lock = {self.work}/cluster.lock
    node address = {address}
[database]
    volatile database directory = {b}/db/volatile
    persistent database directory = {b}/db/persistent
    state database directory = {b}/db/state
[failover]
    disabled = true
[legacy]
    realtime scheduling = false
""")
            env = dict(os.environ, CTDB_TEST_MODE="yes", CTDB_BASE=str(b))
            ctdbds.append(self._spawn(["ctdbd", "--interactive"], b / "ctdbd.pgid",
                                      b / "ctdbd.out", env))  # fmt: skip
        deadline = time.monotonic() + 120
        while self.ctdb(0, "nodestatus", "all").returncode != 0:
            if time.monotonic() > deadline or any(p.poll() is not None for p in ctdbds):
                raise RuntimeError(f"CTDB not healthy; see {self.work}/node.*/log.ctdb:\n"
                                   f"{self.ctdb(0, 'status').stdout}")  # fmt: skip
            time.sleep(1)

    def _start_smbds(self, addresses: list[str]) -> None:
        vfs = default_vfs_objects()
        confs = []
        for i, address in enumerate(addresses):
            socket_path = self.base(i) / "run" / "ctdbd.socket"
            state = self.base(i) / "smb"
            confs.append(smb_conf(state, self.share, self.port, [address], vfs_objects=vfs,
                                  ctdbd_socket=socket_path))  # fmt: skip
        # passdb.tdb is a clustered database: the user added on node 0 is on every node.
        _set_password(confs[0])
        for i, (address, conf) in enumerate(zip(addresses, confs, strict=True)):
            log = conf.parent / "log" / "smbd.out"
            cmd = ["smbd", "--foreground", "--no-process-group", "-s", str(conf)]
            proc = self._spawn(cmd, self.base(i) / "smbd.pgid", log)
            _wait_listening(address, self.port, proc, log)


# -- smbtorture -----------------------------------------------------------------------

# smbtorture's subunit-like lines; a name may hold spaces (smb2.ioctl."copy-chunk
# streams"), and a failure's line ends with " [" before its reason.
_RESULT = re.compile(r"^(success|failure|error|skip|xfail): (.+?)(?: \[.*)?$")


@dataclass
class TortureRun:
    returncode: int
    log: Path
    results: dict[str, str]  # test name (--fullname) -> success, failure, error, skip, xfail

    def count(self, *outcomes: str) -> int:
        return sum(1 for r in self.results.values() if r in outcomes)

    def summary(self) -> str:
        return (f"{self.count('success')} passed, {self.count('failure', 'error')} failed, "
                f"{self.count('skip')} skipped")  # fmt: skip


def run_torture(
    hosts: Sequence[str],
    suite: str,
    port: int,
    outdir: Path,
    *,
    share: str = SHARE,
    target: str = "samba3",
    max_runtime: int = 900,
    extra: Sequence[str] = (),
) -> TortureRun:
    """Run one suite, test or fnmatch glob against ``//hosts[0]/share``; with more
    hosts, each new connection takes the next (smbtorture's ``--unclist``), so in
    the two-tree tests tree1 and tree2 land on different nodes. All on one port."""
    _need("smbtorture")
    outdir.mkdir(parents=True, exist_ok=True)
    unclist: list[str] = []
    if len(hosts) > 1:
        uncs = outdir / f"{suite}.unclist"
        uncs.write_text("".join(f"//{h}/{share}\n" for h in hosts))
        unclist = [f"--unclist={uncs}"]
    cmd = ["smbtorture", f"//{hosts[0]}/{share}", "-U", f"{USER}%{PASSWORD}", "-p", str(port),
           f"--target={target}", "--fullname", f"--maximum-runtime={max_runtime}",
           *unclist, *extra, suite]  # fmt: skip
    log = outdir / f"{suite}.log"
    with open(log, "w") as out:
        out.write(f"# {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                            timeout=max_runtime + 300).returncode  # fmt: skip
    results = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _RESULT.match(line)
        if m:
            results[m[2]] = m[1]
    return TortureRun(rc, log, results)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.samba", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("smbd", help="start one smbd, share at DIR/share")
    p.add_argument("dir", type=Path)
    p.add_argument("--port", type=int, default=445)
    p.add_argument("--interface", action="append", help="address to listen on (repeatable)")
    p.add_argument("--vfs-objects", help="the share's vfs objects (default: acl_xattr ...)")
    p.add_argument("--share-param", action="append", default=[], metavar="'KEY = VALUE'",
                   help="one more share parameter (repeatable), e.g. 'shadow:snapdir = .snaps'")
    p = sub.add_parser("ctdb", help="start a clustered Samba, share at DIR/share")
    p.add_argument("dir", type=Path)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--port", type=int, default=445)
    p = sub.add_parser("stop", help="stop what smbd or ctdb started in DIR")
    p.add_argument("dir", type=Path)
    p = sub.add_parser("torture", help="run one smbtorture suite and count its outcomes")
    p.add_argument("suite")
    p.add_argument("--port", type=int, default=445)
    p.add_argument("--host", action="append", help="node address (repeat to spread connections)")
    p.add_argument("--share", default=SHARE)
    p.add_argument("--outdir", type=Path, default=Path("/tmp/smbgw-torture"))
    args = ap.parse_args(argv)
    if args.cmd == "stop":
        stop(args.dir.resolve())
        return 0
    if args.cmd == "torture":
        run = run_torture(args.host or ["127.0.0.1"], args.suite, args.port, args.outdir,
                          share=args.share)  # fmt: skip
        for name, outcome in run.results.items():
            if outcome != "success":
                print(f"  {outcome}: {name}")
        print(f"{args.suite}: {run.summary()} (log {run.log})")
        return 0 if run.results and run.returncode == 0 else 1
    server: _Server
    if args.cmd == "smbd":
        interfaces = tuple(args.interface or ["127.0.0.1"])
        server = Smbd(args.dir.resolve(), args.port, interfaces, args.vfs_objects,
                      tuple(args.share_param)).start()  # fmt: skip
    else:
        server = CtdbCluster(args.dir.resolve(), args.nodes, args.port).start()
    for host, port in server.endpoints:
        print(f"//{host}/{SHARE} port {port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
