"""The web page (``GET /``) and the API docs (``GET /docs``), both served from package data.

The page is one HTML file, one script and one stylesheet (``kb/web/static``): no build step, no CDN. It is
just another client of the JSON API (``/ask``, ``/chat``, ``/search``, ``/status``, ``/reindex``,
``/documents/{doc_id}``, ``/facets``), so every ACL rule applies to it as to any other caller. It never
writes document text as markup (``textContent`` only) and is served with a Content-Security-Policy that
allows no inline script and nothing from another origin.

``/docs`` is FastAPI's Swagger UI pointed at a vendored, pinned ``swagger-ui-dist`` (see
``static/swagger/VERSION``), so it renders on an offline or air-gapped host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
STATIC_URL = "/web"
SWAGGER_UI_VERSION = "5.35.0"  # swagger-ui-dist from npm; the files in static/swagger are this release's

# The page runs only its own script, talks only to this server, and cannot be framed.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI's starter page (FastAPI's) has an inline script and Swagger sets inline styles; it may still
# load nothing from elsewhere, which is what keeps it working offline.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_HARDENING = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def mount_web(app: FastAPI) -> None:
    """Add ``/`` (the page), ``/web/*`` (its assets and Swagger UI's) and ``/docs`` to ``app``.

    Create the app with ``docs_url=None`` (FastAPI's own ``/docs`` loads Swagger UI from a CDN)."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC, follow_symlink=False), name="web")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache", **_HARDENING}
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        response = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{STATIC_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/swagger/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # the online validator badge would call out
        )
        response.headers.update({"Content-Security-Policy": DOCS_POLICY, **_HARDENING})
        return response
