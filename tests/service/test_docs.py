"""/docs and /redoc work on a separated network: every script, style and icon comes from the service."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest

#: Attributes through which a page makes the browser fetch something.
FETCHED = ("src", "href", "spec-url")


class _Fetched(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [(tag, name, value) for name, value in attrs if name in FETCHED and value is not None]


@pytest.mark.parametrize(
    ("page", "needs"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}),
        ("/redoc", {"redoc.standalone.js"}),
    ],
)
def test_docs_pages_load_only_local_assets(client: httpx.Client, page: str, needs: set[str]) -> None:
    """Regression: FastAPI's default pages load their scripts from a CDN and stay blank offline."""
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # and the browser fetches nothing elsewhere, whatever the libraries' code asks for
    assert r.headers["content-security-policy"].startswith("default-src 'self';")
    assert not re.search(r"https?:|\*", r.headers["content-security-policy"])
    assert not re.search(r"https?:|//[a-z0-9]", r.text, re.IGNORECASE), "an absolute URL in the page"
    parser = _Fetched()
    parser.feed(r.text)
    urls = [url for _, _, url in parser.urls]
    assert needs <= {url.rsplit("/", 1)[-1] for url in urls}, urls
    for tag, attribute, url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), (tag, attribute, url)
        asset = client.get(url)
        assert asset.status_code == 200, (tag, attribute, url)
        assert asset.content, url
    # the page's own code loads the spec from the service too
    assert "'/openapi.json'" in r.text or 'spec-url="/openapi.json"' in r.text
    assert client.get("/openapi.json").status_code == 200
