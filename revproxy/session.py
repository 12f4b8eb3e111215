"""What the dispatcher routes: one proxied connection's destination and where it came from."""

from __future__ import annotations

from dataclasses import dataclass

from revproxy.routing import Target


@dataclass(frozen=True, slots=True)
class Session:
    target: Target
    inbound_tag: str | None
    source: str = ""
    email: str | None = None

    def describe(self) -> str:
        return f"{self.target.network}:{_hostport(self.target.address, self.target.port)}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
