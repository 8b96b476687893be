"""/docs (Swagger UI) and /redoc (ReDoc) that work on a separated network.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and stay blank without internet access. The
`fastapi-offline` package ships both as files; they are served here under `ASSETS_URL`. Each page also
carries a Content-Security-Policy that lets the browser fetch from this service only: ReDoc draws its
attribution logo from cdn.redoc.ly, and what a later version of either adds is stopped the same way.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the pages load their scripts, styles and icon from.
ASSETS_URL = "/docs-assets"
#: The package and its folder that hold `swagger-ui-bundle.js`, `swagger-ui.css`, `redoc.standalone.js`.
ASSETS_PACKAGE = ("fastapi_offline", "static")
#: This service only; inline code for Swagger UI's start-up script and both libraries' styles, data: images
#: for their icons, a blob: worker for ReDoc's search.
POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)


def _local(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = POLICY
    return page


def add_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the documentation pages and their files (create the app with ``docs_url=None,
    redoc_url=None``).

    Args:
        app: the app whose OpenAPI document the pages show.
        docs_url: path of the Swagger UI page.
        redoc_url: path of the ReDoc page.
    """
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                # off a localhost URL, Swagger UI would show a validity badge from validator.swagger.io
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )
