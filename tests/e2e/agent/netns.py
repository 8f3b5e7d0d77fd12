"""The pods' network: a private node network namespace with a bridge, one namespace per pod.

Nothing here touches the machine's own network. The agent makes a *node* network
namespace that holds a bridge with the gateway address of a private /24, and for each
pod a network namespace with loopback up and a veth to that bridge, so two jobs can use
the same ports and every pod has an address of its own.

Namespaces are made by a short-lived thread that unshares its network namespace and
opens `/proc/thread-self/ns/net`; the agent keeps that descriptor, and tools reach the
namespace through `/proc/<agent pid>/fd/<n>`. No `/run/netns` name is ever created, so
when the agent closes the descriptors (or its process dies) the kernel frees the
namespaces and every interface in them: nothing can be left behind.

Pod addresses are reachable from the node namespace only, as in a cluster, where pod IPs
are routable from the nodes and from other pods but not from a laptop outside it. Whatever
must reach pods (the operator reading rank 0's metrics, a test) runs in the node
namespace: `NodeNetwork.command()` prefixes a command line with `nsenter`, and
`NodeNetwork.entered()` moves the calling thread in for a block. The API server listens on
the machine's loopback, which another namespace cannot see, so `forward_host_port()`
relays a loopback port of the node namespace to the same port of the machine: inside the
node namespace the kubeconfig's `https://127.0.0.1:<port>` keeps working.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import select
import socket
import subprocess
import threading
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
BRIDGE = "ks-br0"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def new_namespace() -> int:
    """A new network namespace, held by the returned descriptor (close it to free it)."""
    result: dict[str, int | BaseException] = {}

    def make() -> None:
        # The thread's namespace changes and the thread then ends; the process keeps its own.
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"unshare(CLONE_NEWNET): {os.strerror(errno)}")
            result["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException as error:
            result["error"] = error

    thread = threading.Thread(target=make, name="netns-maker")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["fd"]  # type: ignore[return-value]


def namespace_path(fd: int) -> str:
    return f"/proc/{os.getpid()}/fd/{fd}"


def ip(fd: int, *args: str) -> None:
    """`ip <args>` run inside the namespace held by `fd`."""
    result = subprocess.run(["nsenter", f"--net={namespace_path(fd)}", "ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


class NodeNetwork:
    """The node namespace, its bridge and /24, and the pods' namespaces and addresses."""

    def __init__(self) -> None:
        self.subnet = ipaddress.IPv4Network(f"10.244.{secrets.randbelow(250) + 1}.0/24")
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self._free = [str(h) for h in hosts[1:]]
        self._lock = threading.Lock()
        self._pods: dict[str, tuple[int, str, str]] = {}  # key -> (netns fd, ip, host-side veth)
        self._next_veth = 0
        self._forwarders: list[_Forwarder] = []
        self.fd = new_namespace()
        ip(self.fd, "link", "set", "lo", "up")
        ip(self.fd, "link", "add", BRIDGE, "type", "bridge")
        ip(self.fd, "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", BRIDGE)
        ip(self.fd, "link", "set", BRIDGE, "up")

    @property
    def path(self) -> str:
        """The node namespace as a path that `nsenter --net=` and `setns` accept."""
        return namespace_path(self.fd)

    def add_pod(self, key: str) -> tuple[str, str]:
        """Make `key`'s namespace with an address on the bridge; returns (namespace path, pod IP)."""
        with self._lock:
            if not self._free:
                raise RuntimeError(f"no free pod address left in {self.subnet}")
            address = self._free.pop(0)
            veth = f"ksv{self._next_veth}"
            self._next_veth += 1
        fd = new_namespace()
        try:
            ip(self.fd, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace_path(fd))
            ip(self.fd, "link", "set", veth, "master", BRIDGE, "up")
            ip(fd, "link", "set", "lo", "up")
            ip(fd, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
            ip(fd, "link", "set", "eth0", "up")
            ip(fd, "route", "add", "default", "via", self.gateway)
        except Exception:
            os.close(fd)
            with self._lock:
                self._free.append(address)
            raise
        with self._lock:
            self._pods[key] = (fd, address, veth)
        return namespace_path(fd), address

    def remove_pod(self, key: str) -> None:
        """Free the pod's namespace (its veth goes with it) and, later, its address."""
        with self._lock:
            entry = self._pods.pop(key, None)
            if entry is None:
                return
            fd, address, _ = entry
            # Reused last, so a late packet for a finished pod does not reach a new one.
            self._free.append(address)
        os.close(fd)

    def forward_host_port(self, port: int) -> None:
        """Relay 127.0.0.1:`port` of the node namespace to 127.0.0.1:`port` of the machine."""
        forwarder = _Forwarder(self, port)
        self._forwarders.append(forwarder)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the calling thread in the node namespace (sockets made
        inside stay there; other threads are not affected)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self.fd)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` prefixed to run in the node namespace (pass to subprocess as usual)."""
        return ["nsenter", f"--net={self.path}", *argv]

    def close(self) -> None:
        for forwarder in self._forwarders:
            forwarder.close()
        self._forwarders.clear()
        with self._lock:
            keys = list(self._pods)
        for key in keys:
            self.remove_pod(key)
        os.close(self.fd)


class _Forwarder:
    """TCP relay: a listener made inside the node namespace, connections out in the machine's."""

    def __init__(self, network: NodeNetwork, port: int) -> None:
        self.port = port
        with network.entered():
            self.listener = socket.create_server(("127.0.0.1", port))
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"forward-{port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            try:
                outbound = socket.create_connection(("127.0.0.1", self.port))
            except OSError:
                inbound.close()
                continue
            with self._lock:
                self._sockets.update((inbound, outbound))
            threading.Thread(target=self._relay, args=(inbound, outbound), daemon=True).start()

    def _relay(self, inbound: socket.socket, outbound: socket.socket) -> None:
        """Copy both ways until both sides have finished sending (half-closes pass through)."""
        peers = {inbound: outbound, outbound: inbound}
        try:
            while peers:
                readable, _, _ = select.select(list(peers), [], [])
                for source in readable:
                    data = source.recv(65536)
                    if data:
                        peers[source].sendall(data)
                    else:
                        peers.pop(source).shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self._release(inbound, outbound)

    def _release(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)
                sock.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._release(*socks)
