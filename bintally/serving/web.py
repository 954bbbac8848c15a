"""The web page at GET /: drop a bin photo (or pick a bundled sample) and see the count.

The page is static files (static/index.html, its index.css and index.js: no CDN, no build step, no inline script,
so its Content-Security-Policy can say script-src 'self') that post the photo to POST /v1/count. GET /static/{name}
serves the pages' own script and style files, only those. GET /samples lists the bundled ABID sample photos (with the quantity their
metadata records) and GET /samples/{name} serves one; only names in that folder are served.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from bintally.paths import SAMPLE_DIR
from bintally.serving.config import ServeConfig
from bintally.serving.dataplane import DataPlane
from bintally.serving.errors import RequestError

STATIC_DIR = Path(__file__).parent / "static"
PAGE = STATIC_DIR / "index.html"
CONFIG_MARK = "/*PAGE_CONFIG*/{}"
SAMPLE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\.(jpg|jpeg|png)$")
MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
STATIC_FILES = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in STATIC_TYPES}  # fixed at import: no path from a request


@lru_cache(maxsize=4)
def sample_index(folder: str = str(SAMPLE_DIR)) -> dict[str, dict]:
    """name -> {"name", "expected_quantity"} for each photo in the sample's bin-images folder (sorted by name)."""
    root = Path(folder)
    photos = root / "bin-images"
    if not photos.is_dir():
        return {}
    index = {}
    for path in sorted(photos.iterdir()):
        if not SAMPLE_NAME.match(path.name) or not path.is_file() or path.is_symlink():
            continue
        quantity = None
        meta = root / "metadata" / f"{path.stem}.json"
        try:
            value = json.loads(meta.read_text()).get("EXPECTED_QUANTITY")
            quantity = value if isinstance(value, int) and not isinstance(value, bool) else None
        except (OSError, ValueError, AttributeError):
            pass
        index[path.name] = {"name": path.name, "expected_quantity": quantity}
    return index


def page_settings(plane: DataPlane, config: ServeConfig) -> dict:
    """What every page needs to know: whether to ask for the API key, the model served (once loaded), the body limit."""
    loaded = plane.loaded
    return {"apiKeyRequired": bool(config.api_key), "model": plane.name if loaded else None,
            "version": plane.version if loaded else None, "maxBodyBytes": config.max_body_bytes}


def page_config(plane: DataPlane, config: ServeConfig) -> dict:
    return page_settings(plane, config) | {"countUrl": "/v1/count", "backend": plane.counter.backend_name if plane.loaded else None}


def render_page(page: Path, settings: dict) -> str:
    """A static page with its settings (JSON, safe inside a <script> element) in place of /*PAGE_CONFIG*/{}."""
    blob = json.dumps(settings).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return page.read_text(encoding="utf-8").replace(CONFIG_MARK, blob, 1)


def page_response(page: Path, settings: dict) -> HTMLResponse:
    return HTMLResponse(render_page(page, settings), headers={"Cache-Control": "no-cache"})


def web_router(plane: DataPlane, config: ServeConfig) -> APIRouter:
    router = APIRouter(tags=["Web page"])

    @router.get("/", response_class=HTMLResponse, summary="The web page: drop a bin photo, see the count")
    async def index():
        return page_response(PAGE, page_config(plane, config))

    @router.get("/static/{name}", summary="The web pages' own script and style files", response_class=FileResponse,
                include_in_schema=False)
    async def static_file(name: str):
        path = STATIC_FILES.get(name)
        if path is None:
            raise RequestError(404, f"no static file named {name[:100]!r}", counted=False)
        return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    @router.get("/samples", summary="The bundled sample photos (ABID, CC BY-NC-SA 3.0 US)")
    async def samples():
        return {"samples": list(sample_index().values()),
                "attribution": "Amazon Bin Image Dataset, Amazon.com, Inc. (CC BY-NC-SA 3.0 US)"}

    @router.get("/samples/{name}", summary="One bundled sample photo", response_class=FileResponse,
                responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such sample"}})
    async def sample(name: str):
        entry = sample_index().get(name)  # only names listed from the folder: no path is ever built from the request
        if entry is None:
            raise RequestError(404, f"no sample photo named {name!r}: see GET /samples", counted=False)
        return FileResponse(SAMPLE_DIR / "bin-images" / entry["name"], media_type=MEDIA_TYPES[name.rsplit(".", 1)[1].lower()],
                            headers={"Cache-Control": "public, max-age=86400"})

    return router
