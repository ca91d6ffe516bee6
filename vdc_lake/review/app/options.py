"""What the review server was started with: the catalog, the effective config and the safety settings."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class AppOptions:
    """catalog_path: the catalog every request opens; config: the effective config (a Config);
    token: the secret every request must carry (None: local use only, no token); hosts: the Host
    header values accepted (host names, with or without the port); thumbs_dir: where thumbnails
    are cached; lock_wait: seconds an action waits for another command's writer lock."""

    catalog_path: Path
    config: Any
    thumbs_dir: Path
    hosts: frozenset[str]
    lock_wait: float
    token: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def csrf_token(self) -> str:
        """The token every POST carries (in a header or a form field): pages hold it, other sites cannot read it."""
        return hmac.new(self.secret, b"csrf", "sha256").hexdigest()

    def setting(self, section: str, key: str) -> Any:
        return self.config.section(section)[key]


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def accepted_hosts(host: str, port: int) -> frozenset[str]:
    """The Host header values a request may carry: the bound host (and the loopback names when
    it is local), bare or with the port. Anything else is refused (DNS rebinding)."""
    names = {host, *LOCAL_HOSTS} if host in LOCAL_HOSTS or host in ("0.0.0.0", "::") else {host}
    return frozenset({n for n in names} | {f"{n}:{port}" for n in names})
