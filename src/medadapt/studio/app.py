"""The studio's HTTP layer (FastAPI): the page, the case files and the interaction endpoints.

Safety rules, all enforced here and tested:

- Files are served only through case keys looked up in the :class:`~medadapt.studio.cases.CaseFolder`
  (never a path from the request), plus the page's own static files; labels are written only to their
  case's label path.
- Bound to localhost, requests must name a local host (a page on another site cannot reach the studio
  through DNS rebinding). Bound to another address, every request needs the token printed in the URL
  (query ``token=``, header ``X-Studio-Token`` or the cookie the page gets on its first load).
- Requests that change something and carry an ``Origin`` must come from the studio's own origin.
- Request bodies are limited (``max_body`` bytes, by ``Content-Length`` and while reading).
"""

from __future__ import annotations

import gzip
import io
import secrets
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from medadapt.errors import MedadaptError
from medadapt.io.volumes import write_like
from medadapt.studio.adaptation import AdaptationLoop
from medadapt.studio.state import Studio
from medadapt.studio.suggest import Suggester

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "medadapt_studio_token"
MAX_BODY = 256 * 1024 * 1024  # a label volume of a large CT fits; anything bigger is refused
STATIC = files("medadapt.studio") / "static"


class BoxIn(BaseModel):
    corner0: list[float] = Field(min_length=3, max_length=3)
    corner1: list[float] = Field(min_length=3, max_length=3)
    space: Literal["mm", "voxel"] = "mm"
    value: int = 1
    depth: int = Field(0, ge=0, le=512)


class PaintIn(BaseModel):
    points: list[list[float]] = Field(min_length=1, max_length=20000)
    space: Literal["mm", "voxel"] = "mm"
    value: int = 1  # 0: the eraser
    radius: float = Field(2.0, ge=0, le=64)


class AdapterIn(BaseModel):
    adapter: str | None = Field(None, pattern=r"^[0-9]{1,6}$")
    pin: bool = False


class ClickIn(BaseModel):
    point: list[float] = Field(min_length=3, max_length=3)
    space: Literal["mm", "voxel"] = "mm"
    positive: bool = True
    value: int = 1
    object: int | None = None


def is_local(host: str) -> bool:
    return host.strip("[]") in LOCAL_HOSTS


def create_app(studio: Studio, *, token: str | None = None, local_only: bool = True,
               max_body: int = MAX_BODY, loop: AdaptationLoop | None = None) -> FastAPI:
    """The studio app over ``studio``; ``token`` (required when not ``local_only``) guards every request;
    ``loop`` refits the adapter after each save."""
    if not local_only and not token:
        raise MedadaptError("a studio reachable from other machines needs an access token.")
    app = FastAPI(title="medadapt studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.suggester = suggester = Suggester(studio)

    @app.exception_handler(MedadaptError)
    async def _user_error(_request: Request, err: MedadaptError):
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(KeyError)
    async def _no_case(_request: Request, err: KeyError):
        return JSONResponse({"error": f"no case {err.args[0]!r} in this folder."}, status_code=404)

    app.add_middleware(Guard, token=token)
    if local_only:  # added last: runs first
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"])
    app.add_middleware(BodyLimit, limit=max_body)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/studio")
    def about():
        f = studio.folder
        return {"name": f.name, "modality": f.modality, "classes": {str(k): v for k, v in f.classes.items()},
                "adapter": studio.adapter, "cases": len(f.cases), "adaptation": loop is not None,
                "encoder_engine": studio.encoder_engine}

    @app.get("/api/adapter")
    def adapter_status():
        return {"adapter": studio.adapter, **(loop.status() if loop else {"state": "off"})}

    @app.post("/api/adapter")
    def select_adapter(body: AdapterIn):
        """Go back to an earlier studio adapter (or the zero-shot model: null), optionally pinned."""
        if loop is None:
            raise HTTPException(404, "this studio runs without adaptation (--no-adapt).")
        loop.select(body.adapter, pin=body.pin)
        return adapter_status()

    @app.get("/api/suggest")
    def suggest():
        """The next case to label: the unlabelled case the model in use is least certain about (scored in the
        background; see medadapt.studio.suggest)."""
        return suggester.suggest()

    @app.get("/api/cases")
    def cases():
        return studio.case_list()

    @app.get("/api/cases/{key}")
    def case_info(key: str):
        return studio.info(key)

    @app.get("/api/cases/{key}/image")
    def image(key: str):
        """The image file; a 2D image as the one-slice NIfTI the viewer shows (see studio.cases)."""
        case = studio.folder.case(key)
        if case.is_2d:
            volume = studio.open(key).volume
            return Response(image_nifti_bytes(volume.array), media_type="application/octet-stream")
        return FileResponse(case.image, media_type="application/octet-stream", filename=case.image.name)

    @app.get("/api/cases/{key}/label")
    def label(key: str):
        case = studio.folder.case(key)
        if not studio.folder.has_label(case):
            raise HTTPException(404, f"case {key!r} has no saved label.")
        return FileResponse(case.label, media_type="application/octet-stream", filename=case.label.name)

    @app.get("/api/cases/{key}/mask")
    def mask(key: str):
        labels, oc = studio.labels(key)
        return Response(nifti_bytes(labels, oc.volume), media_type="application/octet-stream",
                        headers={"X-Mask-Version": str(oc.version), "X-Mask-Voxels": str(int(np.count_nonzero(labels))),
                                 "Cache-Control": "no-store"})

    @app.get("/api/cases/{key}/compare")
    def compare(key: str, adapter: str = Query(pattern=r"^([0-9]{1,6}|zero-shot)$")):
        """The case as another studio adapter (or the zero-shot model) would show it: the same boxes, clicks
        and strokes replayed on that model; the headers give its agreement (Dice) with the masks shown now."""
        if loop is None:
            raise HTTPException(404, "this studio runs without adaptation (--no-adapt): no other adapter to compare.")
        studio.folder.case(key)
        other = loop.predictor_for(None if adapter == "zero-shot" else adapter)
        labels, oc = studio.compare(key, other)
        shown, _ = studio.labels(key)
        both = int(np.count_nonzero((labels == shown) & (labels > 0)))
        total = int(np.count_nonzero(labels) + np.count_nonzero(shown))
        return Response(nifti_bytes(labels, oc.volume), media_type="application/octet-stream",
                        headers={"X-Compare-Adapter": adapter, "X-Mask-Voxels": str(int(np.count_nonzero(labels))),
                                 "X-Agreement-Dice": f"{2 * both / total:.4f}" if total else "1.0000",
                                 "Cache-Control": "no-store"})

    @app.post("/api/cases/{key}/box")
    def box(key: str, body: BoxIn):
        return studio.box(key, body.corner0, body.corner1, value=body.value, space=body.space, depth=body.depth)

    @app.post("/api/cases/{key}/click")
    def click(key: str, body: ClickIn):
        return studio.click(key, body.point, positive=body.positive, value=body.value, space=body.space,
                            object_id=body.object)

    @app.post("/api/cases/{key}/paint")
    def paint(key: str, body: PaintIn):
        return studio.paint(key, body.points, value=body.value, radius=body.radius, space=body.space)

    @app.post("/api/cases/{key}/undo")
    def undo(key: str):
        return studio.undo(key)

    @app.post("/api/cases/{key}/redo")
    def redo(key: str):
        return studio.redo(key)

    @app.put("/api/cases/{key}/label")
    async def save(key: str, request: Request):
        """An empty body saves the masks the page shows; a NIfTI body (.nii or .nii.gz bytes) is saved as given."""
        body = await request.body()
        studio.folder.case(key)
        return await run_in_threadpool(_save, key, body)

    def _save(key: str, body: bytes) -> dict:
        saved = studio.save(key, read_label_bytes(body) if body else None)
        if loop is not None:
            loop.request()
        return saved

    return app


class Guard:
    """Refuse cross-site requests that change something, and (with a token) requests without the token.

    The page's first load carries the token in its URL; the response sets it as an HTTP-only cookie, so the
    page's own requests carry it from then on.
    """

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
                refused = JSONResponse({"error": "requests from other sites are refused."}, status_code=403)
                return await refused(scope, receive, send)
        if self.token is None:
            return await self.app(scope, receive, send)
        in_url = request.query_params.get("token")
        given = in_url or request.headers.get("x-studio-token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            refused = JSONResponse({"error": "a valid studio token is required (open the URL the studio printed)."},
                                   status_code=401)
            return await refused(scope, receive, send)
        if not in_url:
            return await self.app(scope, receive, send)
        cookie = JSONResponse(None)
        cookie.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        header = next(v for k, v in cookie.raw_headers if k == b"set-cookie")

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", header)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413), by ``Content-Length`` and while streaming."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = JSONResponse({"error": f"the request is larger than {self.limit} bytes."}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"the request is larger than {self.limit} bytes.")
            return message

        await self.app(scope, limited, send)


def nifti_bytes(labels: np.ndarray, ref) -> bytes:
    """A label volume as gzipped NIfTI bytes with the geometry of ``ref`` (what :func:`write_like` writes)."""
    with tempfile.TemporaryDirectory(prefix="medadapt-studio-") as tmp:
        path = Path(tmp) / "mask.nii.gz"
        write_like(path, labels, ref)
        return path.read_bytes()


def image_nifti_bytes(array: np.ndarray) -> bytes:
    """An image array as gzipped NIfTI bytes with the identity affine (2D images in the viewer)."""
    import nibabel as nib  # lazy: start-up time (see medadapt.io.volumes)

    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), compresslevel=1)


def read_label_bytes(body: bytes) -> np.ndarray:
    """A NIfTI label volume sent by the page (plain or gzipped) as an integer array in file order."""
    import nibabel as nib  # lazy: start-up time (see medadapt.io.volumes)

    try:
        raw = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
        img = nib.Nifti1Image.from_stream(io.BytesIO(raw))
        arr = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for a broken header
        raise MedadaptError(f"the label sent is not a NIfTI volume ({err}).",
                            fix="send the label as .nii or .nii.gz bytes.") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.rint(arr)).any():
            raise MedadaptError("the label sent holds values that are not whole numbers.")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise MedadaptError("the label sent holds values outside 0..65535.")
    return arr.astype(np.uint16)
