"""Where the brokers are: an ``Endpoint`` (host, port, TLS) and the one way a list of them is
written on a command line, ``host[:port],host[:port]`` (as Kafka's ``bootstrap.servers``).

Pure and light (no MQTT library), so the command line and the config generator check a list
without loading a client. ``gridwatch.ground.mqttsession`` uses the endpoints in turn.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{host}:{self.port}"


def parse_endpoints(text: str, default_port: int, tls: bool = False) -> tuple[Endpoint, ...]:
    """Brokers written ``host[:port],host[:port]`` (IPv6 in brackets: ``[::1]:1883``), as the
    centre's ``--mqtt-host`` takes them; a broker without a port is on ``default_port``. Raises
    ValueError saying which item is wrong and how to write it."""
    out: list[Endpoint] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(
                f"{text!r}: an empty broker in the list (write host[:port],host[:port])"
            )
        e = Endpoint(*_host_port(item, default_port), tls=tls)
        if any((e.host, e.port) == (o.host, o.port) for o in out):
            raise ValueError(f"{text!r}: broker {e} is listed twice")
        out.append(e)
    return tuple(out)


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6] or [IPv6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise ValueError(
                f"broker {item!r}: write an IPv6 address as [address] or [address]:port"
            )
        port = rest[1:] if rest else None
    elif item.count(":") > 1:
        raise ValueError(f"broker {item!r}: write an IPv6 address in brackets, e.g. [{item}]:1883")
    else:
        host, sep, after = item.partition(":")
        port = after if sep else None
        if not host:
            raise ValueError(f"broker {item!r}: the host is missing (write host[:port])")
    if port is None:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"broker {item!r}: the port must be a number from 1 to 65535")
    return host, int(port)


__all__ = ["Endpoint", "parse_endpoints"]
