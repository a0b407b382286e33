"""Test hosts on one machine: a network namespace per replica, links cut with iptables.

``TestNetwork(hosts)`` makes a bridge in the root namespace (it gets
``10.77.<net>.1``) and, per host, a namespace joined to the bridge by a veth
pair with its own address ``10.77.<net>.<10 + i>``. Processes left in the root
namespace (a dispatcher, the benchmark's clients) reach the hosts from the
bridge's address. ``cut(a, b)`` drops all traffic between two hosts (inside
both namespaces), ``isolate(host, outside=True)`` also cuts a host off the
root namespace, ``heal()`` restores every link, ``close()`` removes
everything. Needs root, ``ip`` and ``iptables``. Every address lives only
inside namespaces this process made.
"""

from __future__ import annotations

import os
import shutil
import subprocess


class NetworkUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, or ``ip``/``iptables`` missing)."""


def why_unavailable() -> str | None:
    """A sentence saying why partitions cannot run here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network partitions need root (network namespaces and iptables)"
    missing = [tool for tool in ("ip", "iptables", "iptables-restore") if shutil.which(tool) is None]
    if missing:
        return f"network partitions need {' and '.join(missing)} (Debian packages iproute2, iptables)"
    return None


def _run(*args: str, stdin: str | None = None) -> None:
    subprocess.run(args, check=True, capture_output=True, input=None if stdin is None else stdin.encode())


class TestNetwork:
    def __init__(self, hosts: list[str], net: int | None = None) -> None:
        reason = why_unavailable()
        if reason:
            raise NetworkUnavailable(reason)
        self.net = net if net is not None else 100 + os.getpid() % 100
        self.tag = f"dc{self.net}"
        self.bridge = f"{self.tag}br"
        self.hosts = {name: (f"{self.tag}h{i}", f"10.77.{self.net}.{10 + i}") for i, name in enumerate(hosts)}
        self._cuts: set[tuple[str, str]] = set()
        self._outside: set[str] = set()  # hosts cut off the root namespace
        self.close()  # leftovers of a run that died
        try:
            self._build()
        except subprocess.CalledProcessError as exc:
            self.close()
            raise NetworkUnavailable(f"could not build test network: {exc.stderr.decode().strip()}") from exc

    def _build(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.outside_address}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, (namespace, address) in enumerate(self.hosts.values()):
            outside, inside = f"{self.tag}v{i}", f"{self.tag}p{i}"
            _run("ip", "netns", "add", namespace)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            _run("ip", "link", "set", inside, "netns", namespace)
            _run("ip", "link", "set", outside, "master", self.bridge)
            _run("ip", "link", "set", outside, "up")
            _run("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{address}/24", "dev", inside)
            _run("ip", "netns", "exec", namespace, "ip", "link", "set", inside, "up")
            _run("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")

    def address(self, host: str) -> str:
        return self.hosts[host][1]

    @property
    def outside_address(self) -> str:
        """The bridge's address: where traffic from the root namespace comes from."""
        return f"10.77.{self.net}.1"

    def prefix(self, host: str) -> list[str]:
        """Command prefix that runs a program inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[host][0]]

    def _drop(self, host: str, peers: list[str]) -> None:
        """Inside ``host``'s namespace, drop every packet from or to each of ``peers``, all in one step."""
        rules = [f"-A INPUT -s {peer} -j DROP\n-A OUTPUT -d {peer} -j DROP" for peer in peers]
        _run(*self.prefix(host), "iptables-restore", "--noflush", stdin="\n".join(["*filter", *rules, "COMMIT", ""]))

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between hosts ``a`` and ``b``, both ways."""
        self._drop(a, [self.address(b)])
        self._drop(b, [self.address(a)])
        self._cuts.add((a, b))

    def isolate(self, host: str, outside: bool = False) -> None:
        """Cut ``host`` from every other host and, with ``outside``, from the root namespace too.

        Without ``outside``, processes in the root namespace (the dispatcher,
        the benchmark) still reach it. ``host``'s own rules go in first, in one
        step, so it is cut off at once rather than link by link.
        """
        others = [other for other in self.hosts if other != host]
        self._drop(host, [self.address(other) for other in others] + ([self.outside_address] if outside else []))
        for other in others:
            self._drop(other, [self.address(host)])
            self._cuts.add((host, other))
        if outside:
            self._outside.add(host)

    def heal(self) -> None:
        """Restore every link."""
        for namespace, _ in self.hosts.values():
            _run("ip", "netns", "exec", namespace, "iptables", "-F")
        self._cuts.clear()
        self._outside.clear()

    @property
    def partitioned(self) -> bool:
        return bool(self._cuts or self._outside)

    def close(self) -> None:
        """Remove the namespaces, veths and bridge; safe to call twice."""
        for namespace, _ in self.hosts.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
