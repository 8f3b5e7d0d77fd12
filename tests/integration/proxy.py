"""A TCP proxy in front of the API server that can stop passing bytes while every connection stays open.

    with FreezableProxy("127.0.0.1", 6443) as proxy:   # clients connect to proxy.port
        proxy.freeze()   # a stuck network path: no error, no close, nothing arrives
        proxy.thaw()     # what was held back flows on

TLS passes through untouched (the client still verifies the API server's certificate
for 127.0.0.1). Each connection is pumped by one thread per direction.
"""

from __future__ import annotations

import select
import socket
import threading

CHUNK = 65536
POLL_SECONDS = 0.1


class FreezableProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def __enter__(self) -> FreezableProxy:
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        self.flowing.set()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), name="proxy-pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                # While frozen, nothing is read, so nothing is passed on, and TCP holds the sender back.
                self.flowing.wait()
                readable, _, _ = select.select([source], [], [], POLL_SECONDS)
                if not readable or not self.flowing.is_set():
                    continue
                data = source.recv(CHUNK)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
