"""The HTTP server of `bis-prm serve`: a FastAPI app that routes, validates and maps errors to status codes.

The endpoint logic lives in [`~bis_prm.serving.serving_reward`]; this module only adds what HTTP needs, safe by
default:

- the API key (`--api-key`, as vLLM's): every route but `/health` wants `Authorization: Bearer <key>`, else 401;
- a body size limit (`--max-request-bytes`): larger bodies get 413 before they are parsed;
- malformed JSON gets 400, a missing field or a wrong type 422, both with a message naming the field;
- graceful shutdown: on SIGTERM or SIGINT uvicorn stops accepting connections and waits for the requests in flight,
  whose rows the engine scores; the engine stops only after that (the app's lifespan).

Every error body is `{"error": {"message", "type", "param", "code"}}`, vLLM's shape.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bis_prm.serving.engine import BatchingEngine
from bis_prm.serving.protocol import (
    ErrorInfo,
    ErrorResponse,
    HealthResponse,
    RewardRequest,
    RewardResponse,
    ScoreStepsRequest,
    ScoreStepsResponse,
)
from bis_prm.serving.serving_reward import RewardConfig, ServingReward, ServingStepScores

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "build_app", "run_server"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
_OPEN_PATHS = ("/health",)


def _error_body(message: str, kind: str, code: int, param: str | None = None) -> dict:
    return ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=code)).model_dump()


class _RequestGuard:
    """ASGI middleware: the API key and the body size limit, checked before FastAPI reads or parses anything."""

    def __init__(self, app, api_key: str | None, max_request_bytes: int):
        self.app, self.api_key, self.max_request_bytes = app, api_key, max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # only these two are read here: decoding every header of every request costs more
        headers = {
            key.lower().decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key.lower() in (b"authorization", b"content-length")
        }
        if self.api_key is not None and scope["path"] not in _OPEN_PATHS:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.api_key):
                message = "Unauthorized: send the server's API key as `Authorization: Bearer <key>`"
                return await self._reply(send, 401, message, "authentication_error")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            return await self._too_large(send, int(declared))
        # a chunked body (no content-length) is read up to the limit, then handed on as one message
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_request_bytes:
                return await self._too_large(send, len(body))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send, size: int):
        message = f"The request body has {size}+ bytes, more than this server's limit of {self.max_request_bytes}"
        return await self._reply(send, 413, message, "request_too_large")

    @staticmethod
    async def _reply(send, status: int, message: str, kind: str):
        payload = json.dumps(_error_body(message, kind, status)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _field(location) -> str:
    return ".".join(str(part) for part in location if part != "body") or "body"


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = error.errors()
    if any(problem.get("type") == "json_invalid" for problem in problems):
        detail = next(problem for problem in problems if problem.get("type") == "json_invalid")
        where = detail.get("loc", ())[-1] if len(detail.get("loc", ())) > 1 else "?"
        reason = detail.get("ctx", {}).get("error", detail.get("msg"))
        message = f"The body is not valid JSON (at character {where}): {reason}"
        return JSONResponse(_error_body(message, "invalid_json", 400), status_code=400)
    fields = [_field(problem.get("loc", ())) for problem in problems]
    message = "; ".join(f"{name}: {problem.get('msg')}" for name, problem in zip(fields, problems, strict=True))
    return JSONResponse(_error_body(message, "invalid_request", 422, param=fields[0]), status_code=422)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(_error_body(str(error.detail), "http_error", error.status_code), status_code=error.status_code)


async def _server_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("Request to %s failed", request.url.path)
    return JSONResponse(_error_body(f"Internal server error: {error}", "internal_error", 500), status_code=500)


def _json(model) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def build_app(
    engine: BatchingEngine,
    config: RewardConfig | None = None,
    model_name: str = "prm",
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """
    The FastAPI app of `bis-prm serve` over an engine (started and drained by the app's lifespan).

    Args:
        engine ([`~bis_prm.serving.engine.BatchingEngine`]):
            Scores the rows of every request.
        config ([`~bis_prm.serving.serving_reward.RewardConfig`], *optional*):
            Step splitting, aggregation, images.
        model_name (`str`, *optional*, defaults to `"prm"`):
            Reported by `/health`.
        api_key (`str`, *optional*):
            Required as `Authorization: Bearer <key>` on every route but `/health`.
        max_request_bytes (`int`, *optional*, defaults to 32 MiB):
            Larger request bodies get 413.

    Example:

    ```python
    >>> app = build_app(BatchingEngine([StepScorer(model, processor)]), api_key="secret")  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP

    ```
    """
    config = config or RewardConfig()
    step_scores = ServingStepScores(engine, config)
    reward = ServingReward(step_scores)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            # uvicorn has waited for the requests in flight; this finishes anything still queued
            await engine.close()

    app = FastAPI(title="bis-prm serve", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.add_middleware(_RequestGuard, api_key=api_key, max_request_bytes=max_request_bytes)
    app.state.engine = engine

    # the response models document the routes; a handler serializes its model itself, once (FastAPI would dump,
    # validate again and serialize a returned model)
    @app.get("/health", response_model=HealthResponse)
    async def health() -> Response:
        backends = [type(backend).__name__ for backend in engine.backends]
        return _json(HealthResponse(model=model_name, backends=backends, stats=engine.stats.as_dict()))

    @app.post("/get_reward", response_model=RewardResponse)
    async def get_reward(request: RewardRequest) -> Response:
        return _json(await reward.create_reward(request))

    @app.post("/v1/score_steps", response_model=ScoreStepsResponse)
    async def score_steps(request: ScoreStepsRequest) -> Response:
        return _json(await step_scores.score_steps(request))

    return app


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """
    Serve `app` with uvicorn until SIGTERM or SIGINT, then finish every accepted request and exit.

    Example:

    ```python
    >>> run_server(build_app(engine), port=8000)  # doctest: +SKIP

    ```
    """
    import uvicorn

    # timeout_graceful_shutdown=None: wait for every request in flight, however long the model takes
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)
    )
    server.run()
