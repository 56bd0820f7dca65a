"""OpenAI-compatible HTTP API of the coordinator (aiohttp): ``/v1/models``, ``/v1/completions``,
``/v1/chat/completions``, streaming (Server-Sent Events) or not.

This module translates JSON <-> ``GenerateRequest`` / ``GenerateEvent`` and nothing else: every
request goes to the coordinator's own gRPC service over a private Unix socket (a 0700 folder of
its own), so validation, placement, failover, accounting and error mapping are the ones gRPC
clients get, with no TLS or address juggling on loopback. The HTTP side checks the client token
itself (``Authorization: Bearer``, constant time) and bounds the body, the fields and the
requests in flight.

Models: ``edgecloud`` (the cluster's default pair), each live edge model (the SLM writes;
policy default ``slm-only``), each live cloud model (policy default ``llm-only``) and
``<edge model>+<cloud model>`` (that pair). Routing options come in the ``edgecloud`` object or
as top-level fields (the ``openai`` client's ``extra_body``); responses carry the token sources
per choice (``choices[0].edgecloud``) and the request's summary (``edgecloud``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from edgecloud import rpc
from edgecloud.client import SOURCES
from edgecloud.errors import clip
from edgecloud.http_listen import HttpListener, bearer_ok, split_listen
from edgecloud.summary import Summary
from edgecloud.summary import from_proto as summary_from_proto
from edgecloud.v1 import common_pb2, generation_pb2
from edgecloud.v1 import coordinator_pb2 as coord_pb
from edgecloud.v1 import coordinator_pb2_grpc as coord_grpc

log = logging.getLogger(__name__)

DEFAULT_MODEL = "edgecloud"
PAIR_SEPARATOR = "+"
MAX_BODY_BYTES = 2**20
MAX_MESSAGES = 64
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_NAME_CHARS = 256  # model, policy, node ids
MAX_DRAFT_WINDOW = 1024
DEFAULT_MAX_TOKENS = 256
MAX_IN_FLIGHT = 256  # generation requests at once; more get 429
MAX_ERROR_CHARS = 500
STATUS_TIMEOUT_S = 10.0
ROLES = ("system", "developer", "user", "assistant")
EXTENSION = "edgecloud"
# Routing options: in the "edgecloud" object or at the top level (the object wins).
OPTIONS = ("policy", "threshold", "target_cloud_share", "draft_window", "cloud_prefetch", "assistant_prefix",
           "edge_node_id", "session_id")
# Accepted only at their default (None = absent or null).
UNSUPPORTED = {"n": (None, 1), "best_of": (None, 1), "echo": (None, False), "logprobs": (None, False),
               "top_logprobs": (None,), "tools": (None,), "functions": (None,), "suffix": (None,),
               "logit_bias": (None,), "audio": (None,)}
FINISH = {"length": "length", "eos": "stop", "stop": "stop"}


class ApiError(Exception):
    """An OpenAI-style error answer: HTTP ``status`` and the ``error`` object's fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message[:MAX_ERROR_CHARS]
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


GRPC_ERRORS: dict[grpc.StatusCode, tuple[int, str, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_argument"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "failed_precondition"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", "out_of_range"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error", "not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "resource_exhausted"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout", "deadline_exceeded"),
}


def error_from_grpc(code: grpc.StatusCode, details: str) -> ApiError:
    """The HTTP answer to a failed gRPC call (anything unexpected: 500 server_error)."""
    status, kind, name = GRPC_ERRORS.get(code, (500, "server_error", code.name.lower()))
    return ApiError(status, details or code.name, type=kind, code=name)


# Request translation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Catalog:
    """The models of the live nodes."""

    edge: tuple[str, ...] = ()
    cloud: tuple[str, ...] = ()

    def ids(self) -> list[tuple[str, str]]:
        """(model id, owned_by) of every listed model: the default pair, edge, then cloud models."""
        return [(DEFAULT_MODEL, "edgecloud"), *((m, "edgecloud-edge") for m in self.edge),
                *((m, "edgecloud-cloud") for m in self.cloud if m not in self.edge)]

    def knows(self, model: str) -> bool:
        try:
            self.resolve(model)
        except ApiError:
            return False
        return True

    def resolve(self, model: str) -> tuple[str, str, str]:
        """(edge_model, cloud_model, default policy) of ``model``; 404 for an unknown one."""
        if model == DEFAULT_MODEL:
            return "", "", ""
        if model in self.edge:
            return model, "", "slm-only"
        if model in self.cloud:
            return "", model, "llm-only"
        edge, sep, cloud = model.partition(PAIR_SEPARATOR)
        if sep and edge in self.edge and cloud in self.cloud:
            return edge, cloud, ""
        raise ApiError(404, f"the model {clip(model)} does not exist (GET /v1/models lists them)",
                       type="invalid_request_error", param="model", code="model_not_found")


@dataclass(frozen=True)
class ApiRequest:
    """A translated request: the gRPC request and how to answer (stream or not, usage chunk)."""

    chat: bool  # /v1/chat/completions (else /v1/completions)
    model: str
    generate: generation_pb2.GenerateRequest
    stream: bool = False
    include_usage: bool = False
    policy_given: bool = False

    def placed(self, catalog: Catalog) -> ApiRequest:
        """This request with the model's node choice (and default policy) applied."""
        edge, cloud, policy = catalog.resolve(self.model)
        request = generation_pb2.GenerateRequest()
        request.CopyFrom(self.generate)
        request.edge_model, request.cloud_model = edge, cloud
        if policy and not self.policy_given:
            request.policy = policy
        return dataclasses.replace(self, generate=request)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body; 400 for anything else."""
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise invalid("the body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as exc:  # its msg is fixed text: no input echoed
        raise invalid(f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                      code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", code="invalid_json")
    return body


def _string(value: Any, param: str, *, max_chars: int | None = MAX_NAME_CHARS, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise invalid(f"'{param}' must be a string", param)
    if not empty and not value:
        raise invalid(f"'{param}' is empty", param)
    if max_chars is not None and len(value) > max_chars:
        raise invalid(f"'{param}' is longer than {max_chars} characters", param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"'{param}' must be a number", param)
    if not low <= value <= high:
        raise invalid(f"'{param}' must be in [{low:g}, {high:g}], got {value:g}", param)
    return float(value)


def _integer(value: Any, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{param}' must be an integer", param)
    if not low <= value <= high:
        raise invalid(f"'{param}' must be in [{low}, {high}], got {value}", param)
    return value


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"'{param}' must be true or false", param)
    return value


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP:
        raise invalid(f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")
    return [_string(s, "stop", max_chars=MAX_STOP_CHARS) for s in stops]


def _content(value: Any, param: str) -> str:
    """A message's text: a string, or a list of text parts (OpenAI's content array)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"'{param}': only text content parts are served", param)
            parts.append(part["text"])
        return "".join(parts)
    raise invalid(f"'{param}' must be a string or a list of text parts", param)


def _messages(value: Any) -> list[generation_pb2.ChatMessage]:
    if not isinstance(value, list) or not value:
        raise invalid("'messages' must be a non-empty list", "messages")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"'messages' holds {len(value)} messages; at most {MAX_MESSAGES}", "messages")
    out = []
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"'{param}' must be an object", param)
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"'{param}.role' must be one of {', '.join(ROLES)}", f"{param}.role")
        out.append(generation_pb2.ChatMessage(role="system" if role == "developer" else role,
                                              content=_content(message.get("content"), f"{param}.content")))
    return out


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """The routing options: top-level fields, overridden by those of the ``edgecloud`` object."""
    extension = body.get(EXTENSION)
    extension = {} if extension is None else extension
    if not isinstance(extension, dict):
        raise invalid(f"'{EXTENSION}' must be an object", EXTENSION)
    unknown = sorted(set(extension) - set(OPTIONS))
    if unknown:
        raise invalid(f"unknown field '{EXTENSION}.{clip(unknown[0], 40)[1:-1]}'; known: {', '.join(OPTIONS)}",
                      EXTENSION)
    options = {k: body[k] for k in OPTIONS if body.get(k) is not None}
    options.update({k: v for k, v in extension.items() if v is not None})
    return options


def _apply_options(request: generation_pb2.GenerateRequest, options: dict[str, Any]) -> None:
    if "policy" in options:
        request.policy = _string(options["policy"], "policy")
    if "threshold" in options:
        request.threshold = _number(options["threshold"], "threshold", -1e9, 1e9)
    if "target_cloud_share" in options:
        request.target_cloud_share = _number(options["target_cloud_share"], "target_cloud_share", 0.0, 1.0)
    if "draft_window" in options:
        request.draft_window = _integer(options["draft_window"], "draft_window", 0, MAX_DRAFT_WINDOW)
    if "cloud_prefetch" in options:
        request.cloud_prefetch = _boolean(options["cloud_prefetch"], "cloud_prefetch")
    if "assistant_prefix" in options:
        request.assistant_prefix = _string(options["assistant_prefix"], "assistant_prefix", max_chars=None,
                                           empty=True)
    if "edge_node_id" in options:
        request.edge_node_id = _string(options["edge_node_id"], "edge_node_id")
    if "session_id" in options:
        request.session_id = _string(options["session_id"], "session_id")


def _check_unsupported(body: dict[str, Any]) -> None:
    for name, allowed in UNSUPPORTED.items():
        if body.get(name) not in allowed:
            raise invalid(f"'{name}' is not supported by this server (leave it out)", name, "unsupported_parameter")


def _sampling(request: generation_pb2.GenerateRequest, body: dict[str, Any], chat: bool) -> None:
    limit = body.get("max_completion_tokens") if chat else None
    param = "max_completion_tokens" if limit is not None else "max_tokens"
    limit = limit if limit is not None else body.get("max_tokens")
    request.max_tokens = DEFAULT_MAX_TOKENS if limit is None else _integer(limit, param, 1, 2**31 - 1)
    if body.get("temperature") is not None:
        request.temperature = _number(body["temperature"], "temperature", 0.0, 2.0)
    if body.get("top_p") is not None and _number(body["top_p"], "top_p", 0.0, 1.0) != 1.0:
        raise invalid("'top_p' other than 1 is not supported (use temperature)", "top_p", "unsupported_parameter")
    if body.get("seed") is not None:
        request.seed = _integer(body["seed"], "seed", -(2**63), 2**63 - 1)
    request.stop.extend(_stop(body.get("stop")))


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise invalid("'prompt' must be a string (or a list of one string)", "prompt")
    return value


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _boolean(body["stream"], "stream") if body.get("stream") is not None else False
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise invalid("'stream_options' must be an object", "stream_options")
    if not stream:
        raise invalid("'stream_options' needs 'stream': true", "stream_options")
    usage = options.get("include_usage")
    return stream, _boolean(usage, "stream_options.include_usage") if usage is not None else False


def translate(body: dict[str, Any], *, chat: bool) -> ApiRequest:
    """The ``ApiRequest`` of a /v1/chat/completions (``chat``) or /v1/completions body; 400 when invalid.

    One user message becomes the request's prompt (the edge's chat template); longer conversations
    travel as ``messages``.
    """
    if "model" not in body:
        raise invalid("'model' is required", "model")
    model = _string(body["model"], "model")
    _check_unsupported(body)
    request = generation_pb2.GenerateRequest(batched_events=True)
    if chat:
        if "messages" not in body:
            raise invalid("'messages' is required", "messages")
        messages = _messages(body["messages"])
        if len(messages) == 1 and messages[0].role == "user":
            request.prompt = messages[0].content
        else:
            request.messages.extend(messages)
        request.chat = True
    else:
        if "prompt" not in body:
            raise invalid("'prompt' is required", "prompt")
        request.prompt = _prompt(body["prompt"])
        request.chat = False
    _sampling(request, body, chat)
    options = _options(body)
    _apply_options(request, options)
    stream, usage = _stream(body)
    return ApiRequest(chat=chat, model=model, generate=request, stream=stream, include_usage=usage,
                      policy_given="policy" in options)


# Response building -------------------------------------------------------------------------------------

@dataclass
class Piece:
    """The text of one stream message (one or more tokens) and each token's source."""

    text: str
    pieces: list[str]
    sources: list[str]

    @classmethod
    def of(cls, event: generation_pb2.GenerateEvent) -> Piece:
        tokens = (event, *event.more)
        pieces = [t.text for t in tokens]
        return cls("".join(pieces), pieces, [SOURCES.get(t.source, "edge") for t in tokens])


def summary_json(summary: Summary) -> dict[str, Any]:
    """The ``edgecloud`` object of a response: the request's accounting and who served it."""
    out = dataclasses.asdict(summary)
    out.update(cloud_share=summary.cloud_share, round_trips_per_token=summary.round_trips_per_token)
    return out


def usage_json(summary: Summary | None) -> dict[str, int]:
    prompt = summary.prompt_tokens if summary else 0
    completion = summary.output_tokens if summary else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(summary: Summary | None) -> str:
    return FINISH.get(summary.finish_reason, "stop") if summary else "stop"


@dataclass
class Reply:
    """What one request's answer shares across its chunks: id, creation time, model name, kind."""

    api: ApiRequest
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, stream: bool) -> dict[str, Any]:
        if self.api.chat:
            kind = "chat.completion.chunk" if stream else "chat.completion"
            return {"id": f"chatcmpl-{self.id}", "object": kind, "created": self.created, "model": self.api.model}
        return {"id": f"cmpl-{self.id}", "object": "text_completion", "created": self.created,
                "model": self.api.model}

    def _choice(self, text: str | None, finish: str | None, extension: dict[str, Any], *, stream: bool,
                first: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.api.chat and stream:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        elif self.api.chat:
            choice["message"] = {"role": "assistant", "content": text or ""}
        else:
            choice["text"] = text or ""
        choice.update(logprobs=None, finish_reason=finish, edgecloud=extension)
        return choice

    def chunk(self, piece: Piece | None, *, first: bool = False) -> dict[str, Any]:
        """A streamed chunk of ``piece``'s text (``None``: the opening chunk, role only)."""
        extension = {"pieces": piece.pieces, "sources": piece.sources} if piece else {"pieces": [], "sources": []}
        text = piece.text if piece else ""
        return {**self._head(True), "choices": [self._choice(text, None, extension, stream=True, first=first)]}

    def last_chunk(self, summary: Summary | None) -> dict[str, Any]:
        """The chunk with ``finish_reason`` (no text) and the request's summary."""
        choice = self._choice(None if self.api.chat else "", finish_reason(summary), {"pieces": [], "sources": []},
                              stream=True)
        return {**self._head(True), "choices": [choice], EXTENSION: summary_json(summary) if summary else None}

    def usage_chunk(self, summary: Summary | None) -> dict[str, Any]:
        return {**self._head(True), "choices": [], "usage": usage_json(summary)}

    def whole(self, pieces: list[Piece], summary: Summary | None) -> dict[str, Any]:
        """The non-streaming answer."""
        extension = {"pieces": [p for piece in pieces for p in piece.pieces],
                     "sources": [s for piece in pieces for s in piece.sources]}
        text = "".join(piece.text for piece in pieces)
        return {**self._head(False), "choices": [self._choice(text, finish_reason(summary), extension, stream=False)],
                "usage": usage_json(summary), EXTENSION: summary_json(summary) if summary else None}


# The HTTP application ----------------------------------------------------------------------------------

def sse(data: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def error_response(error: ApiError) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return web.json_response(error.body(), status=error.status, headers=headers)


class Gateway:
    """The handlers: an HTTP front of one coordinator's gRPC ``Coordinator`` service."""

    def __init__(self, stub: coord_grpc.CoordinatorStub, *, auth_token: str | None = None,
                 request_timeout_s: float = 3600.0, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.stub = stub
        self._token = auth_token
        self.request_timeout_s = request_timeout_s
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            self._authorize(request)
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except web.HTTPException as exc:  # the router's 404 / 405, aiohttp's 413
            if exc.status == 413:
                return error_response(ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes",
                                               code="request_too_large"))
            kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
            return error_response(ApiError(exc.status, f"{request.method} {clip(request.path, 80)[1:-1]}: "
                                           f"{exc.reason}", type=kind, code=exc.reason.lower().replace(" ", "_")))

    def _authorize(self, request: web.Request) -> None:
        given = request.headers.get("Authorization")
        if bearer_ok(given, self._token):
            return
        why = "missing" if given is None else "invalid"
        raise ApiError(401, f"{why} API key: send 'Authorization: Bearer <token>' with the coordinator's client "
                       "token", code="invalid_api_key")

    async def catalog(self) -> Catalog:
        try:
            status = await self.stub.GetClusterStatus(coord_pb.GetClusterStatusRequest(), timeout=STATUS_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise error_from_grpc(exc.code(), exc.details() or "") from None
        edge: dict[str, None] = {}
        cloud: dict[str, None] = {}
        for node in status.nodes:
            if node.live:
                target = edge if node.info.role == common_pb2.NODE_ROLE_EDGE else cloud
                target.update(dict.fromkeys(node.info.models))
        return Catalog(tuple(edge), tuple(cloud))

    async def models(self, request: web.Request) -> web.Response:
        catalog = await self.catalog()
        return web.json_response({"object": "list", "data": [_model_json(m, owner) for m, owner in catalog.ids()]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        catalog = await self.catalog()
        catalog.resolve(name)  # 404 when unknown
        owners = dict(catalog.ids())
        return web.json_response(_model_json(name, owners.get(name, "edgecloud-pair")))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
        api = translate(parse_body(await request.read()), chat=chat)
        if self.in_flight >= self.max_in_flight:
            raise ApiError(429, f"{self.max_in_flight} requests are in flight; try again later",
                           type="rate_limit_error", code="too_many_requests")
        self.in_flight += 1
        try:
            api = api.placed(await self.catalog())
            call = self.stub.Generate(api.generate, timeout=self.request_timeout_s)
            try:
                first = await _read(call)
                if api.stream:
                    return await self._stream(request, api, call, first)
                return await self._whole(api, call, first)
            finally:
                call.cancel()  # a no-op once the call finished; stops the generation if the client left
        finally:
            self.in_flight -= 1

    async def _whole(self, api: ApiRequest, call, event) -> web.Response:
        pieces, summary = [], None
        while event is not None:
            if event.HasField("summary"):
                summary = summary_from_proto(event.summary)
                break
            pieces.append(Piece.of(event))
            event = await _read(call)
        return web.json_response(Reply(api).whole(pieces, summary))

    async def _stream(self, request: web.Request, api: ApiRequest, call, event) -> web.StreamResponse:
        reply = Reply(api)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        summary = None
        try:
            if api.chat:
                await response.write(sse(reply.chunk(None, first=True)))
            while event is not None:
                if event.HasField("summary"):
                    summary = summary_from_proto(event.summary)
                    break
                await response.write(sse(reply.chunk(Piece.of(event))))
                event = await _read(call)
        except ApiError as exc:  # after the headers: OpenAI's in-stream error event
            log.warning("streamed request failed: %s", exc.message)
            with contextlib.suppress(ConnectionResetError):
                await response.write(sse(exc.body()))
            return response
        except ConnectionResetError:
            log.info("the client left a streamed request; it is cancelled")
            return response
        with contextlib.suppress(ConnectionResetError):
            await response.write(sse(reply.last_chunk(summary)))
            if api.include_usage:
                await response.write(sse(reply.usage_chunk(summary)))
            await response.write(sse("[DONE]"))
            await response.write_eof()
        return response


def _model_json(model: str, owner: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": owner}


async def _read(call) -> generation_pb2.GenerateEvent | None:
    """The next event of a Generate call (None at its end); a failed call raises its ``ApiError``."""
    try:
        event = await call.read()
    except grpc.aio.AioRpcError as exc:
        raise error_from_grpc(exc.code(), exc.details() or "") from None
    return None if event is grpc.aio.EOF else event


# Serving -----------------------------------------------------------------------------------------------

class OpenAIServer:
    """The HTTP listener and its private gRPC channel to the coordinator it runs in.

    ``attach`` (before the gRPC server starts) adds the Unix socket; ``start`` (after) binds HTTP
    and returns the URL; ``close`` stops both.
    """

    def __init__(self, listen: str, security: rpc.SecurityConfig, *, request_timeout_s: float,
                 max_message_bytes: int) -> None:
        self.listen = listen
        self.security = security
        self.request_timeout_s = request_timeout_s
        self.max_message_bytes = max_message_bytes
        self.url = ""
        self._folder: Path | None = None
        self._channel: grpc.aio.Channel | None = None
        self._listener: HttpListener | None = None

    def attach(self, server: grpc.aio.Server) -> None:
        """Give ``server`` the private Unix socket this API dials (a folder only this user can enter)."""
        split_listen(self.listen, "openai listen")
        self._folder = Path(tempfile.mkdtemp(prefix="edgecloud-openai-"))
        if server.add_insecure_port(f"unix:{self._folder / 'grpc.sock'}") == 0:
            raise OSError("cannot bind the OpenAI API's private gRPC socket")

    async def start(self) -> str:
        """Bind the HTTP(S) listener; returns its URL (the real port)."""
        assert self._folder is not None, "attach() first"
        self._channel = rpc.create_channel(f"unix:{self._folder / 'grpc.sock'}",
                                           rpc.SecurityConfig(auth_token=self.security.auth_token),
                                           max_message_bytes=self.max_message_bytes)
        gateway = Gateway(coord_grpc.CoordinatorStub(self._channel), auth_token=self.security.auth_token,
                          request_timeout_s=self.request_timeout_s)
        self._listener = HttpListener(gateway.app(), self.listen, self.security, what="OpenAI API")
        self.url = f"{await self._listener.start()}/v1"
        log.info("OpenAI-compatible API on %s%s", self.url, " (bearer token required)" if self.security.auth_token
                 else "")
        return self.url

    async def close(self) -> None:
        """Stop the listener, close the channel, remove the socket's folder (twice is harmless)."""
        listener, channel, folder = self._listener, self._channel, self._folder
        self._listener = self._channel = self._folder = None
        if listener is not None:
            await listener.close()
        if channel is not None:
            await channel.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
