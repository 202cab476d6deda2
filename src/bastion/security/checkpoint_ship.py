"""Send each audit checkpoint off the box (syslog and/or an HTTP sink), best-effort.

Someone with disk access can rewrite the local checkpoints file together with the log; a copy
held elsewhere is what still proves how long the log was. Delivery runs on one worker thread
behind a bounded queue: a slow or dead sink drops checkpoints (with a warning), it never
delays a request or the shutdown by more than the drain timeout.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import sys
import threading
import urllib.request
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
HTTP_TIMEOUT = 5.0
DRAIN_TIMEOUT = 5.0
SYSLOG_PORT = 514


def syslog_address(text: str) -> str | tuple[str, int]:
    """``/dev/log`` (a Unix socket path), ``host`` or ``host:port`` (UDP; port 514)."""
    if text.startswith("/"):
        return text
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith(":"):
        return host.strip("[]"), int(port)
    return text.strip("[]"), SYSLOG_PORT


class _SysLog(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        # Raise to the shipper, which logs one line, instead of a traceback on stderr.
        error = sys.exc_info()[1]
        if error is not None:
            raise error


class CheckpointShipper:
    """Delivers checkpoint lines to the configured sinks from a worker thread."""

    def __init__(self, *, syslog: str | None = None, url: str | None = None) -> None:
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("audit.checkpoint_url must be an http:// or https:// URL")
        self.syslog = syslog
        self.url = url
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._handler: _SysLog | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.syslog or self.url)

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="audit-checkpoint-ship", daemon=True
            )
            self._thread.start()

    def submit(self, line: str) -> None:
        """Queue ``line`` for delivery; never blocks."""
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            log.warning("audit checkpoint not shipped: the delivery queue is full")

    def close(self) -> None:
        """Deliver what is queued (up to DRAIN_TIMEOUT), then stop."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=DRAIN_TIMEOUT)
        self._thread.join(DRAIN_TIMEOUT)
        self._thread = None
        if self._handler is not None:
            self._handler.close()

    def _run(self) -> None:
        while (line := self._queue.get()) is not None:
            if self.syslog:
                self._to_syslog(self.syslog, line)
            if self.url:
                self._to_url(self.url, line)

    def _to_syslog(self, address: str, line: str) -> None:
        try:
            if self._handler is None:
                self._handler = _SysLog(syslog_address(address))
                self._handler.ident = "bastion-audit-checkpoint: "
            record = logging.LogRecord("bastion.audit", logging.INFO, __file__, 0, line, None, None)
            self._handler.emit(record)
        except OSError as exc:
            log.warning("audit checkpoint not sent to syslog: %s", type(exc).__name__)
            self._handler = None

    def _to_url(self, url: str, line: str) -> None:
        # Only http(s): urllib would also open file: URLs.
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            url,
            data=line.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
                response.read(1024)
        except (OSError, ValueError) as exc:
            # The URL may hold a token: name only the host.
            log.warning(
                "audit checkpoint not delivered to %r: %s",
                urlsplit(url).hostname,
                type(exc).__name__,
            )
