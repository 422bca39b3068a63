"""A TCP proxy on 127.0.0.1 that can stall or cut the connections it forwards.

Fault tests and ``make reliability`` put it between the exporter and PostgreSQL: ``stall()``
stops forwarding while keeping every socket open (a network that silently drops traffic),
``resume()`` forwards again, ``cut()`` closes every connection (a network reset).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target_host``:``target_port`` in a background thread."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        """``port`` 0 listens on a free port; another (e.g. one a client already failed to
        reach) brings a "down" address up."""
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self.connections_accepted = 0
        # Client connections taken from the listener, counted before the upstream connect:
        # the connection attempts a client made even when the target refuses every one.
        self.attempts = 0

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def stall(self) -> None:
        """Stop moving bytes in either direction; connections stay open and new ones are
        accepted but get no answer."""
        self._forwarding.clear()

    def resume(self) -> None:
        """Forward again, including what queued up meanwhile."""
        self._forwarding.set()

    def cut(self) -> None:
        """Close every forwarded connection at once."""
        with self._lock:
            sockets = list(self._peers)
            self._peers.clear()
        for sock in sockets:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        while not self._stopped.is_set():
            if not self._forwarding.is_set():
                self._stopped.wait(0.05)
                continue
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        self.attempts += 1
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        self.connections_accepted += 1
        for sock in (client, upstream):
            sock.setblocking(False)
        with self._lock:
            self._peers[client] = upstream
            self._peers[upstream] = client
        self._selector.register(client, selectors.EVENT_READ, None)
        self._selector.register(upstream, selectors.EVENT_READ, None)

    def _forward(self, sock: socket.socket) -> None:
        with self._lock:
            peer = self._peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
        except OSError:
            pass
        self._close_pair(sock, peer)

    def _close_pair(self, sock: socket.socket, peer: socket.socket) -> None:
        with self._lock:
            self._peers.pop(sock, None)
            self._peers.pop(peer, None)
        for item in (sock, peer):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(item)
            with contextlib.suppress(OSError):
                item.close()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._forwarding.set()
        self._thread.join(5)
        self.cut()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        self._listener.close()
        self._selector.close()
