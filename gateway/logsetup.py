"""Where a node's log goes: stderr (the journal under systemd) or a file
rotated by size.

Rotation is size-based (``logging.handlers.RotatingFileHandler``): when a
write would take the file past ``log_max_bytes``, ``FILE`` becomes
``FILE.1`` (``FILE.1`` becomes ``FILE.2``, and so on up to ``log_backups``,
the oldest dropped) and a new ``FILE`` is started. The node does it itself,
so no logrotate rule and no signal to reopen the file are needed; one file
per node (two processes rotating one file would lose lines).

Under systemd (``$JOURNAL_STREAM`` names our stderr) each line starts with
its syslog priority (``<4>`` for WARNING) and no timestamp: the journal
stores both, so ``journalctl -p warning -u smbgw@n1`` filters by level.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
from typing import TextIO

from .config import Config, ConfigError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

# sd-daemon(3) priorities, which journald reads from a "<N>" line prefix.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """Prefix each record with its priority for journald (SyslogLevelPrefix)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{priority}>{super().format(record)}"


def journal_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd gave us: it sets
    ``$JOURNAL_STREAM`` to that stream's ``device:inode``. A child whose
    stderr was redirected inherits the variable, hence the comparison."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False  # not a real file (replaced in a test, closed)
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def log_handler(cfg: Config) -> logging.Handler:
    """The handler ``cfg`` asks for; ConfigError (one line) when the log
    file cannot be opened."""
    if cfg.log_file:
        try:
            handler: logging.Handler = logging.handlers.RotatingFileHandler(
                cfg.log_file,
                maxBytes=cfg.log_max_bytes,
                backupCount=cfg.log_backups,
                encoding="utf-8",
            )
        except OSError as e:
            raise ConfigError(f"cannot open log file {cfg.log_file}: {e.strerror or e}") from None
        handler.setFormatter(logging.Formatter(FORMAT))
        return handler
    handler = logging.StreamHandler(sys.stderr)
    if journal_stream(sys.stderr):
        handler.setFormatter(JournalFormatter(JOURNAL_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def setup_logging(cfg: Config) -> None:
    """Configure the root logger for ``smbgw serve`` (``log_level`` is
    applied to the root, so a SIGHUP reload changes it for every handler)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(log_handler(cfg))
    root.setLevel(getattr(logging, cfg.log_level, logging.INFO))
