"""A team's own inference service, the way issue 21 tells it (Flask + ONNX Runtime, here
Starlette): `POST /guess` takes a multipart `image` and answers JSON. Its "model" reads the digit
from the image: the image's width modulo 10 (a 17-pixel-wide picture is a 7).

- `POST /guess`: multipart field `image` -> `{"digit": 7, "label": "digit-7", "confidence": 0.93}`;
  anything else -> 400 `{"error": "no file in field 'image'"}` (what a raw POST got in the issue)
- `POST /guess-json`: `{"model": "digits", "inputs": [{"data": BASE64}]}` with the header
  `x-model: digits` -> the same JSON
- `POST /guess-text`: a raw image body -> `text/plain` `digit: 7`
- an `x-internal-token` other than `right` -> 403 that echoes it (a careless service)

Run: `python -m uvicorn --app-dir tests/canary guess_service_app:app --port PORT`.
"""

from __future__ import annotations

import base64
import io

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


def _digit(data: bytes) -> int | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width % 10
    except (UnidentifiedImageError, OSError):
        return None


def _answer(digit: int) -> dict:
    return {"digit": digit, "label": f"digit-{digit}", "confidence": 0.93}


def _refused(request: Request) -> Response | None:
    token = request.headers.get("x-internal-token")
    if token is not None and token != "right":
        return JSONResponse({"error": f"token {token} refused"}, status_code=403)
    return None


async def guess(request: Request) -> Response:
    refused = _refused(request)
    if refused is not None:
        return refused
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return JSONResponse({"error": "no file in field 'image'"}, status_code=400)
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        return JSONResponse({"error": "no file in field 'image'"}, status_code=400)
    digit = _digit(await upload.read())
    if digit is None:
        return JSONResponse({"error": "not an image"}, status_code=422)
    return JSONResponse(_answer(digit))


async def guess_json(request: Request) -> Response:
    if request.headers.get("x-model") != "digits":
        return JSONResponse({"error": "header x-model: digits missing"}, status_code=400)
    document = await request.json()
    digit = _digit(base64.b64decode(document["inputs"][0]["data"]))
    if digit is None:
        return JSONResponse({"error": "not an image"}, status_code=422)
    return JSONResponse(_answer(digit))


async def guess_text(request: Request) -> Response:
    digit = _digit(await request.body())
    if digit is None:
        return PlainTextResponse("not an image\n", status_code=422)
    return PlainTextResponse(f"digit: {digit}\n")


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/guess", guess, methods=["POST"]),
        Route("/guess-json", guess_json, methods=["POST"]),
        Route("/guess-text", guess_text, methods=["POST"]),
        Route("/health", health),
    ]
)
