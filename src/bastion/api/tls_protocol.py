"""HTTP over TLS that tells the app who the client certificate belongs to.

uvicorn does not pass the peer certificate to the application; this protocol adds the
verified client certificate's common name to the scope as ``extensions.tls.client_cn``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def common_name(peer: dict[str, Any] | None) -> str | None:
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class TlsIdentityProtocol(HttpToolsProtocol):
    _client_cn: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self._client_cn = common_name(ssl_object.getpeercert()) if ssl_object else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._client_cn is not None:
            self.scope["extensions"] = {"tls": {"client_cn": self._client_cn}}
