"""The coordinator's OpenAI-compatible HTTP API: request translation and validation (unit), the HTTP
layer over a fake gRPC stub, and real daemons driven by the official ``openai`` client."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgecloud import Client
from edgecloud.client import SOURCES, TokenEvent
from edgecloud.coordinator import openai_api as api
from edgecloud.coordinator.config import CoordinatorConfig
from edgecloud.processes import DaemonGroup
from edgecloud.summary import Summary
from edgecloud.summary import to_proto as summary_to_proto
from edgecloud.v1 import common_pb2, generation_pb2
from edgecloud.v1 import coordinator_pb2 as coord_pb

PAIR_SEEDS = (21, 22)  # tests/conftest.py's PAIR_SEEDS (the repository root is not importable)
TOKENS = 24
PROMPTS = ("def fib(n):", "for i in range(10):")
CLIENT_TOKEN = "client-s3cret"
NODE_TOKEN = "node-s3cret"


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "edgecloud", "messages": [{"role": "user", "content": "hi"}], **fields}


# Translation -------------------------------------------------------------------------------------------

def test_one_user_message_becomes_the_prompt_through_the_chat_template() -> None:
    req = api.translate(chat(max_tokens=7, temperature=0.5, seed=3, stop="\n"), chat=True)
    g = req.generate
    assert (g.prompt, g.chat, g.max_tokens, g.temperature, g.seed, list(g.stop)) == ("hi", True, 7, 0.5, 3, ["\n"])
    assert not g.messages and g.batched_events and not req.stream and req.chat


def test_a_conversation_travels_as_messages() -> None:
    body = chat(messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    g = api.translate(body, chat=True).generate
    assert not g.prompt and [(m.role, m.content) for m in g.messages] == [("system", "be brief"), ("user", "ab")]


def test_completions_send_raw_text_and_max_completion_tokens_wins() -> None:
    g = api.translate({"model": "m", "prompt": ["x = 1"], "max_tokens": 5}, chat=False).generate
    assert (g.prompt, g.chat, g.max_tokens) == ("x = 1", False, 5)
    assert api.translate(chat(max_tokens=5, max_completion_tokens=9), chat=True).generate.max_tokens == 9
    assert api.translate(chat(), chat=True).generate.max_tokens == api.DEFAULT_MAX_TOKENS


def test_routing_options_top_level_and_extension_object() -> None:
    req = api.translate(chat(policy="entropy", threshold=0.2, edgecloud={
        "policy": "speculative", "draft_window": 4, "target_cloud_share": 0.1, "cloud_prefetch": True}), chat=True)
    g = req.generate
    assert (g.policy, g.threshold, g.draft_window, g.target_cloud_share, g.cloud_prefetch) == (
        "speculative", 0.2, 4, 0.1, True)
    assert req.policy_given
    assert not api.translate(chat(), chat=True).policy_given


def test_stream_options() -> None:
    req = api.translate(chat(stream=True, stream_options={"include_usage": True}), chat=True)
    assert req.stream and req.include_usage
    with pytest.raises(api.ApiError, match="needs 'stream'"):
        api.translate(chat(stream_options={"include_usage": True}), chat=True)


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "edgecloud"}, "messages"),
    (chat(messages=[]), "messages"),
    (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": "x"}] * (api.MAX_MESSAGES + 1)), "messages"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_tokens=True), "max_tokens"),
    (chat(max_tokens="5"), "max_tokens"),
    (chat(max_completion_tokens=-1), "max_completion_tokens"),
    (chat(temperature=3), "temperature"),
    (chat(temperature=float("nan")), "temperature"),
    (chat(top_p=0.5), "top_p"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat(stop=[""]), "stop"),
    (chat(stop="x" * (api.MAX_STOP_CHARS + 1)), "stop"),
    (chat(n=2), "n"),
    (chat(logprobs=True), "logprobs"),
    (chat(tools=[{}]), "tools"),
    (chat(stream="yes"), "stream"),
    (chat(edgecloud={"polcy": "x"}), "edgecloud"),
    (chat(edgecloud=[]), "edgecloud"),
    (chat(policy=3), "policy"),
    (chat(target_cloud_share=1.5), "target_cloud_share"),
    (chat(draft_window=api.MAX_DRAFT_WINDOW + 1), "draft_window"),
    (chat(model="m" * (api.MAX_NAME_CHARS + 1)), "model"),
])
def test_invalid_fields_are_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(api.ApiError) as caught:
        api.translate(body, chat=True)
    assert (caught.value.status, caught.value.type, caught.value.param) == (400, "invalid_request_error", param)


def test_bad_json_and_messages_echo_no_unbounded_input() -> None:
    for raw in (b"{bad", b"[1]", b"\xff\xfe", b""):
        with pytest.raises(api.ApiError) as caught:
            api.parse_body(raw)
        assert caught.value.status == 400 and caught.value.code == "invalid_json"
    long = "x" * 100_000
    for attempt in (lambda: api.Catalog().resolve(long), lambda: api.translate(chat(edgecloud={long: 1}), chat=True),
                    lambda: api.parse_body(b'{"a": "' + long.encode() + b'"')):
        with pytest.raises(api.ApiError) as caught:
            attempt()
        assert len(caught.value.message) < 300


def test_models_resolve_to_nodes_and_a_default_policy() -> None:
    catalog = api.Catalog(edge=("slm",), cloud=("llm",))
    assert catalog.resolve("edgecloud") == ("", "", "")
    assert catalog.resolve("slm") == ("slm", "", "slm-only")
    assert catalog.resolve("llm") == ("", "llm", "llm-only")
    assert catalog.resolve("slm+llm") == ("slm", "llm", "")
    for unknown in ("gpt-4o", "llm+slm", "slm+", "+llm"):
        with pytest.raises(api.ApiError) as caught:
            catalog.resolve(unknown)
        assert (caught.value.status, caught.value.code) == (404, "model_not_found")
    cloud = api.translate(chat(model="llm"), chat=True).placed(catalog).generate
    assert (cloud.cloud_model, cloud.policy) == ("llm", "llm-only")
    chosen = api.translate(chat(model="llm", policy="speculative"), chat=True).placed(catalog).generate
    assert chosen.policy == "speculative"
    assert [m for m, _ in catalog.ids()] == ["edgecloud", "slm", "llm"]


@pytest.mark.parametrize(("code", "status"), [
    (grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.FAILED_PRECONDITION, 400),
    (grpc.StatusCode.NOT_FOUND, 404), (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (grpc.StatusCode.UNAVAILABLE, 503), (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (grpc.StatusCode.INTERNAL, 500), (grpc.StatusCode.UNKNOWN, 500)])
def test_grpc_status_to_http(code: grpc.StatusCode, status: int) -> None:
    assert api.error_from_grpc(code, "why").status == status


def test_sources_are_the_sdks() -> None:
    event = generation_pb2.GenerateEvent(text="a", source=common_pb2.SOURCE_EDGE, more=[
        generation_pb2.GenerateEvent(text="b", source=common_pb2.SOURCE_CLOUD),
        generation_pb2.GenerateEvent(text="c", source=common_pb2.SOURCE_EDGE_DEGRADED)])
    piece = api.Piece.of(event)
    assert piece.text == "abc" and piece.pieces == ["a", "b", "c"]
    assert piece.sources == [SOURCES[common_pb2.SOURCE_EDGE], SOURCES[common_pb2.SOURCE_CLOUD],
                             SOURCES[common_pb2.SOURCE_EDGE_DEGRADED]]


def test_config_checks_the_openai_listen_address() -> None:
    assert CoordinatorConfig(openai_listen="127.0.0.1:0").openai_listen == "127.0.0.1:0"
    for bad in ("127.0.0.1", "host:http", "h:70000"):
        with pytest.raises(ValueError, match="openai_listen"):
            CoordinatorConfig(openai_listen=bad)
    assert api.split_listen("[::1]:8000") == ("::1", 8000)


# The HTTP layer over a fake stub -----------------------------------------------------------------------

class FakeCall:
    """A Generate call that plays ``events`` (then EOF), or fails with ``error`` after them."""

    def __init__(self, events: list[generation_pb2.GenerateEvent], error: grpc.StatusCode | None = None) -> None:
        self.events = list(events)
        self.error = error
        self.cancelled = False

    async def read(self):
        if self.events:
            return self.events.pop(0)
        if self.error is not None:
            raise grpc.aio.AioRpcError(self.error, grpc.aio.Metadata(), grpc.aio.Metadata(), details="nope")
        return grpc.aio.EOF

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    def __init__(self, events=(), error: grpc.StatusCode | None = None) -> None:
        self.events, self.error = list(events), error
        self.requests: list[generation_pb2.GenerateRequest] = []
        self.calls: list[FakeCall] = []

    async def GetClusterStatus(self, request, timeout):
        node = coord_pb.NodeStatus(info=common_pb2.NodeInfo(node_id="e", role=common_pb2.NODE_ROLE_EDGE,
                                                            models=["slm"]), live=True)
        stale = coord_pb.NodeStatus(info=common_pb2.NodeInfo(node_id="c", role=common_pb2.NODE_ROLE_CLOUD,
                                                             models=["gone"]), live=False)
        return coord_pb.ClusterStatus(nodes=[node, stale])

    def Generate(self, request, timeout):
        self.requests.append(request)
        self.calls.append(FakeCall(self.events, self.error))
        return self.calls[-1]


def tokens_then_summary() -> list[generation_pb2.GenerateEvent]:
    summary = summary_to_proto(Summary(edge_tokens=2, cloud_tokens=1, prompt_tokens=5, cloud_round_trips=1,
                                       finish_reason="length"), policy="entropy")
    return [generation_pb2.GenerateEvent(text="He", source=common_pb2.SOURCE_EDGE, more=[
                generation_pb2.GenerateEvent(text="l", source=common_pb2.SOURCE_CLOUD)]),
            generation_pb2.GenerateEvent(text="lo", source=common_pb2.SOURCE_EDGE),
            generation_pb2.GenerateEvent(summary=summary)]


def over_http(stub: FakeStub, scenario, **gateway_kwargs) -> None:
    async def main() -> None:
        gateway = api.Gateway(stub, **gateway_kwargs)
        async with TestClient(TestServer(gateway.app())) as client:
            await scenario(client)
    asyncio.run(main())


def sse_events(text: str) -> list[Any]:
    assert text.endswith("\n\n")
    events = [block.removeprefix("data: ") for block in text.split("\n\n") if block]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def test_http_whole_answer_usage_and_sources() -> None:
    stub = FakeStub(tokens_then_summary())

    async def scenario(client: TestClient) -> None:
        reply = await client.post("/v1/chat/completions", json=chat(model="slm", max_tokens=3))
        assert reply.status == 200
        body = await reply.json()
        choice = body["choices"][0]
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert choice["message"] == {"role": "assistant", "content": "Hello"} and choice["finish_reason"] == "length"
        assert choice["edgecloud"] == {"pieces": ["He", "l", "lo"], "sources": ["edge", "cloud", "edge"]}
        assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        assert body["edgecloud"]["policy"] == "entropy" and body["edgecloud"]["cloud_round_trips"] == 1
        assert body["edgecloud"]["cloud_share"] == pytest.approx(1 / 3)
        assert stub.requests[0].edge_model == "slm" and stub.requests[0].policy == "slm-only"
    over_http(stub, scenario)


def test_http_stream_chunks_as_openai() -> None:
    stub = FakeStub(tokens_then_summary())

    async def scenario(client: TestClient) -> None:
        reply = await client.post("/v1/chat/completions", json=chat(
            stream=True, stream_options={"include_usage": True}))
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(await reply.text())
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:3]]
        assert texts == ["Hel", "lo"] and chunks[1]["choices"][0]["edgecloud"]["sources"] == ["edge", "cloud"]
        assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None, None, None, "length"]
        assert chunks[3]["choices"][0]["delta"] == {} and chunks[3]["edgecloud"]["edge_tokens"] == 2
        assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 8
        assert len(chunks) == 5
    over_http(stub, scenario)


def test_http_completion_stream_without_usage() -> None:
    async def scenario(client: TestClient) -> None:
        reply = await client.post("/v1/completions", json={"model": "edgecloud", "prompt": "x", "stream": True})
        events = sse_events(await reply.text())
        assert [e["choices"][0]["text"] for e in events[:-1]] == ["Hel", "lo", ""]
        assert all(e["object"] == "text_completion" and "usage" not in e for e in events[:-1])
    over_http(FakeStub(tokens_then_summary()), scenario)


@pytest.mark.parametrize(("code", "status"), [(grpc.StatusCode.INVALID_ARGUMENT, 400),
                                              (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
                                              (grpc.StatusCode.UNAVAILABLE, 503)])
def test_http_grpc_errors_before_the_first_token(code: grpc.StatusCode, status: int) -> None:
    stub = FakeStub(error=code)

    async def scenario(client: TestClient) -> None:
        for stream in (False, True):
            reply = await client.post("/v1/chat/completions", json=chat(stream=stream))
            assert reply.status == status
            error = (await reply.json())["error"]
            assert set(error) == {"message", "type", "param", "code"} and "nope" in error["message"]
        assert all(call.cancelled for call in stub.calls)
    over_http(stub, scenario)


def test_http_error_after_the_first_token_is_an_error_event() -> None:
    stub = FakeStub(tokens_then_summary()[:1], error=grpc.StatusCode.UNAVAILABLE)

    async def scenario(client: TestClient) -> None:
        events = sse_events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).text())
        assert events[-1]["error"]["code"] == "unavailable" and "[DONE]" not in events
    over_http(stub, scenario)


def test_http_auth_routes_size_and_in_flight_limits() -> None:
    stub = FakeStub(tokens_then_summary())

    async def scenario(client: TestClient) -> None:
        good = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": CLIENT_TOKEN}):
            reply = await client.get("/v1/models", headers=headers)
            assert reply.status == 401 and (await reply.json())["error"]["code"] == "invalid_api_key"
        models = await (await client.get("/v1/models", headers=good)).json()
        assert [m["id"] for m in models["data"]] == ["edgecloud", "slm"]  # the stale node's model is not listed
        assert (await client.get("/v1/models/slm", headers=good)).status == 200
        assert (await client.get("/v1/models/gone", headers=good)).status == 404
        reply = await client.get("/v1/engines", headers=good)
        assert reply.status == 404 and (await reply.json())["error"]["type"] == "not_found_error"
        assert (await client.get("/v1/chat/completions", headers=good)).status == 405
        big = json.dumps(chat(stop="x", padding="y" * api.MAX_BODY_BYTES))
        reply = await client.post("/v1/chat/completions", data=big, headers=good)
        assert reply.status == 413 and (await reply.json())["error"]["code"] == "request_too_large"
        assert not stub.requests
        reply = await client.post("/v1/chat/completions", json=chat(), headers=good)
        assert reply.status == 429 and (await reply.json())["error"]["code"] == "too_many_requests"
    over_http(stub, scenario, auth_token=CLIENT_TOKEN, max_in_flight=0)


# Real daemons ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openai_cluster(tmp_path_factory, make_tiny_pair, start_tiny_nodes):
    """``tiny_cluster`` with the coordinator's OpenAI API on (``--openai-listen 127.0.0.1:0``)."""
    root = tmp_path_factory.mktemp("openai-cluster")
    folders = make_tiny_pair(root, PAIR_SEEDS)
    with DaemonGroup(log_dir=root / "logs") as group:
        coordinator, _, _ = start_tiny_nodes(group, folders, coordinator_args=["--openai-listen", "127.0.0.1:0"])
        client = Client(coordinator.address, timeout_s=120)
        client.wait_for_nodes(2)
        yield {"client": client, "url": coordinator.endpoints["openai"], "coordinator": coordinator}
        client.close()


@pytest.fixture(scope="module")
def oai(openai_cluster):
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=openai_cluster["url"], api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def sdk(client: Client, prompt: str, **kwargs) -> tuple[str, list[str], Summary]:
    events = list(client.generate(prompt, max_tokens=TOKENS, **kwargs))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    return "".join(e.text for e in tokens), [e.source for e in tokens], client.last_summary


def test_announced_url_and_models(openai_cluster, oai) -> None:
    assert openai_cluster["url"].startswith("http://127.0.0.1:") and openai_cluster["url"].endswith("/v1")
    ids = {m.id: m.owned_by for m in oai.models.list()}
    assert ids == {"edgecloud": "edgecloud", "slm": "edgecloud-edge", "llm": "edgecloud-cloud"}
    assert oai.models.retrieve("slm+llm").owned_by == "edgecloud-pair"


@pytest.mark.parametrize("policy", ["slm-only", "llm-only", "speculative"])
def test_chat_stream_equals_the_sdk(openai_cluster, oai, policy: str) -> None:
    for prompt in PROMPTS:
        text, sources, summary = sdk(openai_cluster["client"], prompt, policy=policy)
        stream = oai.chat.completions.create(model="edgecloud", messages=[{"role": "user", "content": prompt}],
                                             max_tokens=TOKENS, temperature=0, stream=True,
                                             stream_options={"include_usage": True}, extra_body={"policy": policy})
        chunks = list(stream)
        content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        streamed_sources = [s for c in chunks if c.choices for s in c.choices[0].model_extra["edgecloud"]["sources"]]
        assert "".join(content) == text and text
        assert streamed_sources == sources
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finals) == 1 and finals[0].choices[0].finish_reason == api.FINISH[summary.finish_reason]
        assert finals[0].model_extra["edgecloud"]["policy"] == summary.policy
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == summary.output_tokens > 0
        assert chunks[-1].usage.prompt_tokens == summary.prompt_tokens > 0
    if policy != "slm-only":
        assert "cloud" in streamed_sources or summary.checked_tokens > 0


def test_cloud_model_name_means_llm_only(openai_cluster, oai) -> None:
    text, _, _ = sdk(openai_cluster["client"], PROMPTS[0], policy="llm-only")
    slm_text, _, _ = sdk(openai_cluster["client"], PROMPTS[0], policy="slm-only")
    assert text != slm_text  # the tiny pair disagrees on this prompt: the check below can tell them apart
    reply = oai.chat.completions.create(model="llm", messages=[{"role": "user", "content": PROMPTS[0]}],
                                        max_tokens=TOKENS)
    assert reply.choices[0].message.content == text
    assert reply.model_extra["edgecloud"]["policy"] == "llm-only"


def test_completions_raw_text_whole_and_streamed(openai_cluster, oai) -> None:
    prompt = PROMPTS[1]
    text, sources, summary = sdk(openai_cluster["client"], prompt, policy="speculative", chat=False, seed=1)
    chat_text, _, _ = sdk(openai_cluster["client"], prompt, policy="speculative", seed=1)
    assert text != chat_text  # raw text and the chat template give different answers: chat=false matters
    whole = oai.completions.create(model="edgecloud", prompt=prompt, max_tokens=TOKENS, seed=1,
                                   extra_body={"edgecloud": {"policy": "speculative"}})
    assert whole.object == "text_completion" and whole.choices[0].text == text
    assert whole.choices[0].model_extra["edgecloud"]["sources"] == sources
    assert whole.usage.completion_tokens == summary.output_tokens and whole.usage.prompt_tokens == summary.prompt_tokens
    assert whole.model_extra["edgecloud"]["cloud_round_trips"] == summary.cloud_round_trips > 0
    streamed = oai.completions.create(model="edgecloud", prompt=prompt, max_tokens=TOKENS, seed=1, stream=True,
                                      extra_body={"edgecloud": {"policy": "speculative"}})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text


def test_stop_string(openai_cluster, oai) -> None:
    text, _, _ = sdk(openai_cluster["client"], PROMPTS[0])
    stop = text[len(text) // 2:len(text) // 2 + 2]
    expected, _, summary = sdk(openai_cluster["client"], PROMPTS[0], stop=(stop,))
    assert summary.finish_reason == "stop" and len(expected) < len(text)
    reply = oai.chat.completions.create(model="edgecloud", messages=[{"role": "user", "content": PROMPTS[0]}],
                                        max_tokens=TOKENS, stop=[stop])
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"


def _http(url: str, body: dict | None = None, *, headers: dict[str, str] | None = None,
          context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_errors_through_the_real_coordinator(openai_cluster, oai) -> None:
    openai = pytest.importorskip("openai")
    url = openai_cluster["url"]
    cases = [(chat(policy="no-such-policy"), 400, "unknown policy"),
             (chat(max_tokens=65), 400, "max_tokens"),  # over the edge's --max-tokens-limit 64
             (chat(model="gpt-4o"), 404, "does not exist")]
    for body, status, words in cases:
        code, reply = _http(f"{url}/chat/completions", body)
        assert code == status and words in reply["error"]["message"]
        assert set(reply["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="edgecloud", messages=[{"role": "user", "content": "x"}], max_tokens=0)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert _http(f"{url}/nothing-here")[0] == 404


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 that is its own CA."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_and_bearer_token(tmp_path: Path) -> None:
    """A coordinator with TLS and a client token: HTTPS with its certificate, 401 without the token;
    with it, the private gRPC channel carries the token too (no nodes: 503, not an auth failure)."""
    openai = pytest.importorskip("openai")
    cert, key = _self_signed(tmp_path)
    with DaemonGroup(log_dir=tmp_path / "logs") as group:
        coordinator = group.start("coordinator", [
            "-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0", "--openai-listen", "127.0.0.1:0",
            "--tls-cert", str(cert), "--tls-key", str(key), "--auth-token", CLIENT_TOKEN, "--node-token", NODE_TOKEN])
        url = coordinator.endpoints["openai"]
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        assert _http(f"{url}/models", context=context)[0] == 401
        code, reply = _http(f"{url}/models", headers={"Authorization": "Bearer wrong"}, context=context)
        assert code == 401 and reply["error"]["code"] == "invalid_api_key" and "wrong" not in reply["error"]["message"]
        good = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        code, reply = _http(f"{url}/models", headers=good, context=context)
        assert code == 200 and [m["id"] for m in reply["data"]] == ["edgecloud"]
        code, reply = _http(f"{url}/chat/completions", chat(), headers=good, context=context)
        assert code == 503 and reply["error"]["code"] == "unavailable"
        with pytest.raises(urllib.error.URLError):  # the certificate is checked
            urllib.request.urlopen(f"{url}/models", timeout=10)
        http_client = openai.DefaultHttpxClient(verify=context)
        with (openai.OpenAI(base_url=url, api_key="wrong", max_retries=0, http_client=http_client) as client,
              pytest.raises(openai.AuthenticationError)):
            client.models.list()
