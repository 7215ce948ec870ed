"""API documentation pages served offline: Swagger UI at /docs and ReDoc at /redoc.

Their scripts and styles come from the ``fastapi-offline`` package (MIT), which ships the
Swagger UI and ReDoc bundles inside its wheel; the pages reference only these local copies, so
they work on a host without internet access, and a Content-Security-Policy keeps the browser
from fetching anything from another origin.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
# The pages may load nothing from elsewhere: ReDoc's bundle asks a CDN for its footer logo, and
# this policy keeps the browser from trying (inline scripts: the pages' own start-up code).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'"
)
# Swagger UI keeps the X-API-Key typed into "Authorize" across reloads, and shows durations.
SWAGGER_PARAMETERS = {"persistAuthorization": True, "displayRequestDuration": True}


def install_docs(app: FastAPI) -> None:
    """Mount the bundled assets and add ``/docs`` and ``/redoc`` (not in the schema).

    The app must be created with ``docs_url=None, redoc_url=None``.
    """
    assets = resources.files("fastapi_offline").joinpath("static")
    app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page
