"""A TCP port forwarded to a PostgreSQL server's Unix socket, that a test cuts off like a
lost network (``pg.py`` makes the server)."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Literal


class _Link:
    """One forwarded connection: two sockets and a thread for each direction."""

    def __init__(self, proxy: PgProxy, client: socket.socket, upstream: socket.socket) -> None:
        self._proxy = proxy
        self._sockets = (client, upstream)
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._ended = 0

    def start(self) -> None:
        client, upstream = self._sockets
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while not self._proxy._flowing.wait(0.05):  # cut(existing="hang")
                    if self._cut.is_set():
                        return
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # pass the end on, as TCP would
        except OSError:
            self.cut()
        finally:
            with self._lock:
                self._ended += 1
                last = self._ended == 2
            if last:  # the other pump is done with the sockets too
                for sock in self._sockets:
                    sock.close()
                self._proxy._forget(self)

    def cut(self) -> None:
        """End both sides (the pumps close the sockets: never close one in use)."""
        self._cut.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


Mode = Literal["forward", "hang", "refuse"]


class PgProxy:
    """``127.0.0.1:PORT`` forwarded to a server's Unix socket; :meth:`cut` is a lost network.

    Runs in its own threads, so it keeps forwarding while the test blocks on a process.
    """

    def __init__(self, socket_path: Path) -> None:
        self._target = str(socket_path)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Condition()
        self._mode: Mode = "forward"
        self._stopped = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> PgProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, database: str, user: str = "postgres") -> str:
        """``postgresql://USER@127.0.0.1:PORT/DB``."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def connections(self) -> int:
        """Connections forwarded now."""
        with self._lock:
            return len(self._links)

    def cut(
        self,
        mode: Literal["hang", "refuse"] = "hang",
        existing: Literal["close", "hang"] = "close",
    ) -> None:
        """Cut the server off. New connections: ``hang`` accepts and holds them without an
        answer (a client waits for its timeout), ``refuse`` refuses them (the port stays
        ours). Forwarded ones: ``close`` ends them, ``hang`` stops passing their bytes (a
        partition: neither side hears anything until :meth:`restore`)."""
        with self._lock:
            if self._mode == "refuse" and mode == "hang":
                self._listen()
            elif self._mode != "refuse" and mode == "refuse":
                self._refuse()
            self._mode = mode
            self._flowing.clear()
            links = list(self._links) if existing == "close" else []
        for link in links:
            link.cut()

    def restore(self) -> None:
        """Forward again: held bytes and connections go on, new ones are forwarded."""
        with self._lock:
            if self._mode == "refuse":
                self._listen()
            self._mode = "forward"
            held, self._held = self._held, []
            self._flowing.set()
            self._lock.notify_all()
        for client in held:
            self._forward(client)

    def stop(self) -> None:
        """Close the port and every connection. Safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._mode != "refuse":
                self._listener.shutdown(socket.SHUT_RD)  # wakes accept()
            self._lock.notify_all()
            links, held = list(self._links), self._held
        self._thread.join(10)
        self._listener.close()
        for link in links:
            link.cut()
        for client in held:
            client.close()

    def _refuse(self) -> None:
        # A bound socket that does not listen: a connection gets a reset (refused), and
        # nobody else can take the port meanwhile.
        self._listener.shutdown(socket.SHUT_RD)  # wakes accept()
        try:  # the port a bind gave (port 0) is let go: take it back at once
            self._listener.bind(("127.0.0.1", self.port))
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: a port bound by number stays bound
                raise

    def _listen(self) -> None:
        self._listener.listen()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                with self._lock:
                    while self._mode == "refuse" and not self._stopped:
                        self._lock.wait()
                    if self._stopped:
                        return
                continue
            with self._lock:
                if self._stopped or self._mode == "refuse":
                    client.close()
                    continue
                if self._mode == "hang":
                    self._held.append(client)
                    continue
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self._target)
        except OSError:  # the server is down: the client sees its connection end
            upstream.close()
            client.close()
            return
        link = _Link(self, client, upstream)
        with self._lock:
            if self._stopped:
                upstream.close()
                client.close()
                return
            self._links.add(link)
        link.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
