"""A TCP relay that the tests switch on and off: a PACS that goes down and comes back at one address."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    """Forwards 127.0.0.1:`port` to `target` once started.

    The port is bound at once, so nothing else can take it, but connections to it are refused
    until `start` listens.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self._server: socket.socket | None = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])

    def start(self) -> None:
        assert self._server is not None, "a stopped relay is not started again"
        self._server.listen()
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
