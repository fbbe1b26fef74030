"""The page's JSON API (Starlette), the only thing the page uses:

    POST /api/train/start    {TrainConfig fields, "preset"}   start (or continue a paused run)
    POST /api/train/pause    stop between two steps and save the checkpoint
    POST /api/train/reset    forget the run (the next start makes a new one)
    GET  /api/state          step, running, config, loss curve (log10), dev points, steps/s
    GET  /api/events         server-sent events: the state and the insides, a few times a second
    GET  /api/next?context=  the next character's distribution after a context
    GET  /api/sample?n=&prefix=&temperature=&top_k=&seed=   names, each with its steps' distributions

Errors are a 4xx with {"error": "one line"}; no file path ever comes from a request.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._files import json_safe
from ..config import TrainConfig
from .inside import next_distribution, sample_with_steps
from .session import Busy, Session

STATIC = Path(__file__).resolve().parent / "static"
SETTABLE = {f.name for f in dataclasses.fields(TrainConfig)} - {"work_dir", "input_file", "tensorboard",
                                                                   "num_threads", "diagnostics"}
MAX_SAMPLES = 100
MAX_PREFIX = 64
EVENT_SECONDS = 0.25


class ApiError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def ok(obj, status: int = 200) -> JSONResponse:
    return JSONResponse(json_safe(obj), status_code=status)


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())[:500]}, status_code=status)


def plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


# -- checking what a request asks ---------------------------------------------------------
def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        v = int(text)
    except ValueError:
        raise ApiError(f"{name} must be an integer, got {text[:40]!r}") from None
    if not lo <= v <= hi:
        raise ApiError(f"{name} must be an integer in [{lo}, {hi}], got {v}")
    return v


def query_float(request: Request, name: str, default: float, lo: float, hi: float, open_lo: bool = False) -> float:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        v = float(text)
    except ValueError:
        raise ApiError(f"{name} must be a number, got {text[:40]!r}") from None
    if not math.isfinite(v) or v > hi or (v <= lo if open_lo else v < lo):
        raise ApiError(f"{name} must be a number in {'(' if open_lo else '['}{lo:g}, {hi:g}], got {text[:40]}")
    return v


def query_text(request: Request, name: str, vocab, limit: int) -> str:
    text = request.query_params.get(name, "")
    if len(text) > limit:
        raise ApiError(f"{name} is longer than {limit} characters")
    bad = sorted({c for c in text if c not in vocab.stoi or c == "."})
    if bad:
        raise ApiError(f"{name} has characters the model does not know: {''.join(bad)!r} "
                       f"(it knows {''.join(vocab.itos[1:])!r})")
    return text


# -- the app -------------------------------------------------------------------------------
def create_app(session: Session) -> Starlette:
    async def call(fn, *args):
        """Runs blocking work (a join, a forward pass) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def handle(fn):
        async def endpoint(request: Request):
            try:
                return await fn(request)
            except ApiError as e:
                return error(str(e), e.status)
            except Busy as e:
                return error(str(e), 409)
            except (ValueError, TypeError, IndexError, KeyError) as e:
                return error(str(e), 400)
            except MemoryError:
                return error("out of memory: the model or the batch is too large for this machine", 400)
        return endpoint

    async def index(request: Request):
        return FileResponse(STATIC / "index.html")

    async def favicon(request: Request):
        return Response(status_code=204)

    async def plotly(request: Request):
        return FileResponse(plotly_js(), media_type="text/javascript")

    async def start(request: Request):
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            raise ApiError("the body must be JSON (an object of TrainConfig fields)") from None
        if not isinstance(body, dict):
            raise ApiError("the body must be a JSON object of TrainConfig fields")
        unknown = sorted(set(body) - SETTABLE - {"preset", "overwrite"})
        if unknown:
            raise ApiError(f"unknown settings {unknown}; the page may set {sorted(SETTABLE | {'preset', 'overwrite'})}")
        await call(session.start, body)
        return ok(session.state())

    async def pause(request: Request):
        await call(session.pause)
        return ok(session.state())

    async def reset(request: Request):
        await call(session.reset)
        return ok(session.state())

    async def state(request: Request):
        return ok(await call(session.state))

    async def next_char(request: Request):
        model, vocab = session.model, session.vocab
        if model is None:
            raise ApiError("no model yet: start a training first", 409)
        context = query_text(request, "context", vocab, MAX_PREFIX)
        probs = await call(next_distribution, model, vocab, context)
        return ok({"context": context, "vocab": list(vocab.itos), "probs": probs})

    async def sample(request: Request):
        model, vocab = session.model, session.vocab
        if model is None:
            raise ApiError("no model yet: start a training first", 409)
        n = query_int(request, "n", 10, 1, MAX_SAMPLES)
        prefix = query_text(request, "prefix", vocab, MAX_PREFIX)
        temperature = query_float(request, "temperature", 1.0, 0.0, 100.0, open_lo=True)
        top_k = query_int(request, "top_k", 0, 0, vocab.size)
        seed = query_int(request, "seed", 0, 0, 2 ** 63 - 1)
        out = await call(sample_with_steps, model, vocab, session.train_words, n, prefix, temperature, top_k, seed)
        return ok({"samples": out})

    async def events(request: Request):
        async def stream():
            seen = -1
            while True:
                if await request.is_disconnected():
                    break
                if session.version != seen:
                    seen = session.version
                    try:
                        payload = json_safe(await call(session.event))
                    except Exception as e:  # (a Reset between two reads): the page shows it, the stream goes on
                        payload = {"error": f"{type(e).__name__}: {e}"}
                    yield f"data: {json.dumps(payload, allow_nan=False)}\n\n"
                await asyncio.sleep(EVENT_SECONDS)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def not_found(request: Request, exc):
        return error(f"no such page or API call: {request.url.path}", 404)

    async def bad_method(request: Request, exc):
        return error(f"{request.method} is not allowed on {request.url.path}", getattr(exc, "status_code", 405))

    routes = [
        Route("/", index),
        Route("/plotly.min.js", plotly),
        Route("/favicon.ico", favicon),
        Route("/api/train/start", handle(start), methods=["POST"]),
        Route("/api/train/pause", handle(pause), methods=["POST"]),
        Route("/api/train/reset", handle(reset), methods=["POST"]),
        Route("/api/state", handle(state)),
        Route("/api/events", events),
        Route("/api/next", handle(next_char)),
        Route("/api/sample", handle(sample)),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    return Starlette(routes=routes, middleware=[Middleware(GZipMiddleware, minimum_size=1000)],
                     exception_handlers={404: not_found, 405: bad_method})
