"""The sample page service: the customer's GPU inference service that Shipyard releases.

`GET /health` says which device serves; `POST /internal/translate/page` takes a page image
(raw body with an image/* content type, or multipart field `file`) and returns a processed
image of the same size and format, with `x-fallback-used` (1 when a GPU was expected but
the page ran on CPU) and `x-remote-elapsed-ms`.

In a container: `uvicorn main:app`, configured from the environment (`Settings.from_env`).
The Shipyard sandbox builds one instance per Cloud Run revision with `create_app(settings)`,
passing the device, the simulated model time, fault drills and a `log(severity, text)`
callable. This module knows nothing of the sandbox.

Faults (drills of the failures seen in the field, set by `Settings.faults`, in a container from
`PAGE_FAULTS`, e.g. `PAGE_FAULTS=oom` in the revision's env: the way a bad release carries them):
- `silent_cpu_fallback`: the CUDA provider fails at start-up, pages run on CPU, x-fallback-used: 1
- `oom`: a page request loads a model bigger than the instance's memory: in a container with a
  memory limit the process really grows past it and the kernel kills it; where no limit can be
  read, the request answers 500 `Memory limit exceeded` instead
- `http_503`: the first N page requests (0 = all) answer 503
- `unicode_header`: a non-ASCII response header makes the request fail (UnicodeEncodeError, 500)
- `crash_at_start`: the model runtime fails to load at start-up and the process exits with 1
- `never_ready`: loading the model never ends, so the server never listens on $PORT
- `missing_dependency:MODULE`: the entry point imports MODULE, which the image lacks: the
  ModuleNotFoundError's traceback goes to stderr and the process exits with 1 (default module
  `onnxruntime`)
- `slow_start:N`: loading the model takes N seconds (a float) before the server listens on $PORT

`missing_dependency` and `slow_start` act in a container only (the Shipyard sandbox's in-process
emulator plays them itself, as the platform would show them).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import io
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageOps, UnidentifiedImageError

LogFn = Callable[[str, str], None]
FAULTS = (
    "silent_cpu_fallback",
    "oom",
    "http_503",
    "unicode_header",
    "crash_at_start",
    "never_ready",
    "missing_dependency",
    "slow_start",
)
DEFAULT_MISSING_MODULE = "onnxruntime"
CGROUP_MEMORY_LIMITS = (  # cgroup v2, then v1: what the container's memory limit is
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def stdout_log(severity: str, text: str) -> None:
    """Cloud Run reads one JSON object per line as a structured log entry."""
    stream = sys.stderr if severity in ("ERROR", "CRITICAL") else sys.stdout
    print(json.dumps({"severity": severity, "message": text}), file=stream, flush=True)


def detect_cuda() -> bool:
    """True when this container sees an NVIDIA GPU (a model runtime would confirm it).

    A machine without GPUs that rehearses a GPU release (the Shipyard sandbox) says so with
    `SHIPYARD_ACCELERATOR`, the accelerator the revision asked for."""
    if os.environ.get("SHIPYARD_ACCELERATOR"):
        return True
    try:
        import torch  # type: ignore[import-not-found]

        return bool(torch.cuda.is_available())
    except ImportError:
        return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def _parse_faults(text: str) -> dict[str, str]:
    """ "http_503:3,oom,missing_dependency:torch" -> {"http_503": "3", "oom": "",
    "missing_dependency": "torch"}: each fault with its argument (count, module or seconds)."""
    faults: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, argument = item.partition(":")
        if name not in FAULTS:
            raise ValueError(f"PAGE_FAULTS: unknown fault {name!r}; allowed: {', '.join(FAULTS)}")
        faults[name] = argument.strip()
    return faults


def _number(name: str, argument: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(argument or 0)
    except ValueError:
        raise ValueError(
            f"PAGE_FAULTS: {name}:{argument!r} needs a number ({kind.__name__}), e.g. {name}:3"
        ) from None


@dataclass
class Settings:
    """What one instance of the service runs with."""

    internal_token: str | None = None
    device: str = "auto"  # "auto" (detect CUDA), "gpu" or "cpu"
    gpu_ms: int = 0  # simulated model time per page on GPU (0 in a real deployment)
    cpu_ms: int = 0  # ... and on CPU
    service: str = ""
    revision: str = ""
    faults: dict[str, int] = field(default_factory=dict)  # fault -> requests (http_503)
    log: LogFn = stdout_log
    missing_module: str | None = None  # missing_dependency: imported at start, not installed
    start_delay_s: float = 0.0  # slow_start: model loading before the server listens

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        given = _parse_faults(env.get("PAGE_FAULTS", ""))
        module = given.pop("missing_dependency", None)
        delay = given.pop("slow_start", None)
        return cls(
            internal_token=env.get("INTERNAL_TOKEN") or None,
            device=env.get("PAGE_DEVICE", "auto"),
            gpu_ms=int(env.get("PAGE_SIMULATED_GPU_MS", "0")),
            cpu_ms=int(env.get("PAGE_SIMULATED_CPU_MS", "0")),
            service=env.get("K_SERVICE", ""),
            revision=env.get("K_REVISION", ""),
            faults={name: int(_number(name, arg, int)) for name, arg in given.items()},
            missing_module=(module or DEFAULT_MISSING_MODULE) if module is not None else None,
            start_delay_s=_number("slow_start", delay, float) if delay else 0.0,
        )


def memory_limit_bytes() -> int | None:
    """The memory limit this process runs under (its cgroup's), None when there is none."""
    for path in CGROUP_MEMORY_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 50:  # v1 writes a huge number for "no limit"
            return int(text)
    return None


def exhaust_memory(limit: int, log: LogFn) -> None:
    """Grow past `limit` in touched 16 MiB chunks, as a model too big for the instance does; the
    kernel's OOM killer ends the process on the way (returns only if it did not)."""
    log(
        "INFO",
        f"loading the page model: {limit // 2**20 + 64} MiB for a {limit // 2**20} MiB limit",
    )
    held = []
    while len(held) * 16 * 2**20 < limit + 64 * 2**20:
        held.append(b"\x01" * (16 * 2**20))  # written, so every page is really resident
    held.clear()


def process_page(data: bytes) -> tuple[bytes, str, tuple[int, int]]:
    """Grayscale + autocontrast, same size and format. Raises ValueError on a non-image."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not an image: {exc}") from None
    fmt = image.format or "PNG"
    out = ImageOps.autocontrast(ImageOps.grayscale(image), cutoff=1)
    buffer = io.BytesIO()
    out.save(buffer, format=fmt)
    return buffer.getvalue(), Image.MIME.get(fmt, "application/octet-stream"), out.size


def create_app(settings: Settings | None = None) -> FastAPI:
    """One instance of the service; start-up (device detection) happens here."""
    settings = settings or Settings.from_env()
    log = settings.log
    if settings.missing_module:
        # As an entry point importing a module the image lacks: the ModuleNotFoundError's
        # traceback on stderr, the process exits with 1 (uvicorn loads the app before listening).
        importlib.import_module(settings.missing_module)
    if settings.start_delay_s:
        log("INFO", f"loading the page model ({settings.start_delay_s:g} s) before listening")
        time.sleep(settings.start_delay_s)  # the server listens on $PORT only after this
    if "crash_at_start" in settings.faults:
        log(
            "ERROR",
            "ImportError: libcudnn_ops_infer.so.8: cannot open shared object file: No such file "
            "or directory (the model runtime cannot load; exiting)",
        )
        raise SystemExit(1)
    if "never_ready" in settings.faults:
        log("INFO", "loading the page model before listening on $PORT ...")
        threading.Event().wait()  # never ends: the server never listens
    wants_gpu = settings.device == "gpu" or (settings.device == "auto" and detect_cuda())
    device = "gpu" if wants_gpu else "cpu"
    fallback = False
    if wants_gpu and "silent_cpu_fallback" in settings.faults:
        log(
            "ERROR",
            "[E:onnxruntime:Default, provider_bridge_ort.cc:1992 TryGetProviderInfo_CUDA] "
            "Failed to load library libonnxruntime_providers_cuda.so with error: "
            "libcudnn_cnn.so.9: undefined symbol: _ZN5cudnn3cnn5infer22queryClusterPoolEv",
        )
        log(
            "WARNING",
            "Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 12.*. "
            "Falling back to CPUExecutionProvider.",
        )
        device, fallback = "cpu", True
    log("INFO", f"page service starting: device={device} revision={settings.revision or '-'}")

    app = FastAPI(title="page service", docs_url=None, redoc_url=None, openapi_url=None)
    state = {"page_requests": 0}

    @app.middleware("http")
    async def _errors_and_revision(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - any unhandled error: logged as uvicorn would, 500
            log(
                "ERROR",
                "Exception in ASGI application\n"
                + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
            response = JSONResponse({"error": "internal error"}, status_code=500)
        if settings.revision:
            response.headers["x-revision"] = settings.revision
        return response

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "device": device,
            "fallback": fallback,
            "revision": settings.revision,
            "service": settings.service,
        }

    @app.post("/internal/translate/page")
    async def translate_page(request: Request) -> Response:
        if settings.internal_token is not None:
            given = request.headers.get("x-internal-token", "")
            if not hmac.compare_digest(given.encode(), settings.internal_token.encode()):
                log("WARNING", "page request refused: missing or wrong X-Internal-Token")
                return JSONResponse({"error": "unauthorized"}, status_code=401)
        state["page_requests"] += 1
        if "http_503" in settings.faults:
            limit = settings.faults["http_503"]
            if limit == 0 or state["page_requests"] <= limit:
                log("WARNING", "page request rejected: model worker unavailable (503)")
                return JSONResponse({"error": "unavailable"}, status_code=503)

        data = await _read_image(request)
        if data is None:
            return JSONResponse(
                {"error": "send the page as an image/* body or a multipart field 'file'"},
                status_code=415,
            )
        started = time.perf_counter()
        if "oom" in settings.faults:
            limit = memory_limit_bytes()
            if limit is not None:
                await asyncio.to_thread(exhaust_memory, limit, log)
            log(
                "ERROR",
                "Memory limit exceeded: the container was terminated while loading the model "
                "for a page; consider increasing the memory limit.",
            )
            return JSONResponse({"error": "Memory limit exceeded"}, status_code=500)
        try:
            body, media_type, size = await asyncio.to_thread(process_page, data)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        delay_ms = settings.gpu_ms if device == "gpu" else settings.cpu_ms
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)  # stands in for the model's inference time
        elapsed_ms = round((time.perf_counter() - started) * 1000)
        headers = {
            "x-fallback-used": "1" if fallback else "0",
            "x-remote-elapsed-ms": str(elapsed_ms),
            "x-page-size": f"{size[0]}x{size[1]}",
        }
        if "unicode_header" in settings.faults:
            headers["x-page-title"] = "第1页 · translated"  # latin-1 only: UnicodeEncodeError
        log("INFO", f"page done: {size[0]}x{size[1]} device={device} elapsed_ms={elapsed_ms}")
        return Response(body, media_type=media_type, headers=headers)

    return app


async def _read_image(request: Request) -> bytes | None:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        return await upload.read() if hasattr(upload, "read") else None
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return await request.body()
    return None


def __getattr__(name: str):
    """`uvicorn main:app` builds the app from the environment on first access only."""
    if name == "app":
        globals()["app"] = create_app(Settings.from_env())
        return globals()["app"]
    raise AttributeError(name)
