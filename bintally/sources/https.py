"""https:// URIs: allowlisted hosts only, never a link-local or reserved address, redirects only within the host."""

from __future__ import annotations

import ipaddress
from urllib.parse import urljoin, urlsplit

from bintally.sources.errors import SourceError, SourceProblem, refused, too_large
from bintally.sources.policy import SourcePolicy

MAX_REDIRECTS = 3
TIMEOUT_S = 10.0


def refused_address(host: str) -> bool:
    """An IP literal that no allowlist may open: link-local (cloud metadata services), unspecified or multicast."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


class HttpsReader:
    def __init__(self, policy: SourcePolicy):
        self.policy = policy
        self._client = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def client(self):
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, timeout=TIMEOUT_S,
                                             headers={"Accept": "image/*", "Accept-Encoding": "identity"})
        return self._client

    def check(self, uri: str) -> None:
        """Refuse a URL the policy does not allow, before any connection."""
        parts = urlsplit(uri)
        host = (parts.hostname or "").lower()
        if parts.scheme.lower() != "https":
            raise refused(f"{uri}: only https:// is allowed")
        if parts.username or parts.password:
            raise refused(f"{uri}: credentials in the URI are not allowed")
        if not host or host not in self.policy.allow_https_hosts:
            raise refused(f"{uri}: host {host!r} is not allowed (start the server with --allow-https-host {host or 'HOST'})")
        if refused_address(host):
            raise refused(f"{uri}: address {host} is never fetched (link-local, reserved or unspecified)")

    async def read(self, uri: str) -> bytes:
        import httpx

        self.check(uri)
        url = uri
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self.client().stream("GET", url) as answer:
                    if not answer.is_redirect:
                        return await self.body(uri, answer)
                    url = self.redirect_target(uri, url, answer.headers.get("Location", ""))
            except httpx.HTTPError as e:
                raise SourceError(SourceProblem.UNREACHABLE, f"{uri}: could not be fetched ({e.__class__.__name__})") from None
        raise SourceError(SourceProblem.UNREACHABLE, f"{uri}: more than {MAX_REDIRECTS} redirects")

    def redirect_target(self, uri: str, url: str, location: str) -> str:
        """Where a redirect leads, if it stays on the same (allowed) host."""
        target = urljoin(url, location)
        if host_of(target) != host_of(url):
            raise refused(f"{uri}: redirected to another host ({urlsplit(target).hostname}); not followed")
        self.check(target)
        return target

    async def body(self, uri: str, answer) -> bytes:
        """The answer's body, if it is a 200 within the byte limit (declared or streamed)."""
        limit = self.policy.max_bytes
        if answer.status_code != 200:
            problem = SourceProblem.MISSING if answer.status_code in (404, 410) else SourceProblem.UNREACHABLE
            raise SourceError(problem, f"{uri}: the server answered HTTP {answer.status_code}")
        declared = answer.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(uri, limit)
        data = bytearray()
        async for chunk in answer.aiter_raw():
            data += chunk
            if len(data) > limit:
                raise too_large(uri, limit)
        return bytes(data)
