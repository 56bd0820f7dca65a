"""Fuzzing every gRPC method of the three services on REAL daemons (tiny random models, port 0).

Each case sends one request to one method: a random valid-ish message built from the proto
descriptors (tensors with wrong dtype, shape, size, NaN, huge dims), the bytes of such a message
mutated (truncated, bytes flipped), or random raw bytes. Every answer must be a status of
``ALLOWED`` (never UNKNOWN or INTERNAL), with a non-empty message, and the daemons must still
serve afterwards. ``EDGECLOUD_FUZZ_CASES`` sets the cases per service (default 300); the
``slow`` tests run 10,000 per service. ``EDGECLOUD_FUZZ_REPORT=path`` appends a JSON line per
service (cases, codes histogram, seconds).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edgecloud.activations import activation_to_proto
from edgecloud.processes import DaemonGroup
from edgecloud.routing.policies import POLICIES
from edgecloud.v1 import cloud_node_pb2, coordinator_pb2, edge_node_pb2, generation_pb2, tensor_pb2

FUZZ_CASES = int(os.environ.get("EDGECLOUD_FUZZ_CASES", "300"))
SLOW_CASES = 10_000
CALL_TIMEOUT_S = 60.0
HIDDEN = 32  # the tiny models' hidden size
C = grpc.StatusCode
ALLOWED = frozenset({C.OK, C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.NOT_FOUND, C.FAILED_PRECONDITION,
                     C.OUT_OF_RANGE})
# Domain answers a method gives by design, beyond ALLOWED (errors.py): the registry's lease checks,
# a cloud_address the edge does not know (PERMISSION_DENIED, passed on by the coordinator), a taken
# session id.
EXTRA: dict[str, frozenset[grpc.StatusCode]] = {
    "/edgecloud.v1.Coordinator/RegisterNode": frozenset({C.ALREADY_EXISTS}),
    "/edgecloud.v1.Coordinator/Heartbeat": frozenset({C.PERMISSION_DENIED}),
    "/edgecloud.v1.Coordinator/DeregisterNode": frozenset({C.PERMISSION_DENIED}),
    # no live node for the named model or capability: UNAVAILABLE by design (Cluster.place; retry later)
    "/edgecloud.v1.Coordinator/Generate": frozenset({C.PERMISSION_DENIED, C.UNAVAILABLE}),
    "/edgecloud.v1.EdgeNode/Generate": frozenset({C.PERMISSION_DENIED}),
    "/edgecloud.v1.CloudNode/OpenSession": frozenset({C.ALREADY_EXISTS}),  # a session_id the client chose, taken
}
SERVICES = {"coordinator": coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"],
            "edge": edge_node_pb2.DESCRIPTOR.services_by_name["EdgeNode"],
            "cloud": cloud_node_pb2.DESCRIPTOR.services_by_name["CloudNode"]}
POLICY_NAMES = [*POLICIES, "split", "slm-only", ""]


# strategies from descriptors ------------------------------------------------------------------------------

INT_BOUNDS = {FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
              FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
              FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
              FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
              FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
              FieldDescriptor.TYPE_ENUM: (-2**31, 2**31 - 1)}


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (lo, hi, -1, 0, 1, 2, 3, 4, 8, 16, 17, 64, 65, 2**31 - 1, 2**31, 2**53) if lo <= v <= hi]
    return st.one_of(st.integers(max(lo, -2), min(hi, 40)), st.sampled_from(edges), st.integers(lo, hi))


def _strings(name: str) -> st.SearchStrategy[str]:
    special = ["", "a", "x" * 300, "x" * 70_000, "\x00", "é" * 10, "def fib(n):", "127.0.0.1:1", "cloud-0",
               "edge-0", "fuzz:edge"]
    if name == "policy":
        return st.one_of(st.sampled_from(POLICY_NAMES), st.text(max_size=12))
    if name in ("prompt", "assistant_prefix"):
        return st.one_of(st.sampled_from(["def fib(n):", "print(i)", "for i in range(10):", ""]),
                         st.text(max_size=40), st.sampled_from(special))
    return st.one_of(st.text(max_size=16), st.sampled_from(special))


def _tensors() -> st.SearchStrategy[tensor_pb2.Tensor]:
    """A hidden-state tensor (B, T, HIDDEN) in some codec, then perhaps broken one way."""

    @st.composite
    def build(draw) -> tensor_pb2.Tensor:
        batch, positions = draw(st.integers(0, 2)), draw(st.integers(0, 5))
        codec = draw(st.sampled_from(["fp32", "fp16", "bf16", "int8-token", "int4-g8", "fp16+lz4"]))
        hidden = draw(st.sampled_from([HIDDEN, HIDDEN, 16, 1]))
        values = torch.randn(batch, positions, hidden) * draw(st.sampled_from([1.0, 1e-3, 1e4]))
        if draw(st.booleans()) and values.numel():
            values.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        try:
            msg = activation_to_proto(values, codec)
        except ValueError:  # a codec that cannot carry it (inf in int8): send it raw
            msg = activation_to_proto(values, "fp32")
        breakage = draw(st.sampled_from(["none", "none", "dtype", "shape", "huge", "empty-huge", "nbytes",
                                         "payload", "rank"]))
        if breakage == "dtype":
            msg.dtype = draw(st.sampled_from([*tensor_pb2.DType.values(), 99]))
        elif breakage in ("shape", "huge", "empty-huge", "rank"):
            shape = {"shape": draw(st.lists(st.integers(-2, 70), max_size=4)), "huge": [1, 2**40, HIDDEN],
                     "empty-huge": [0, 2**40, HIDDEN], "rank": [1] * 20}[breakage]
            del msg.shape[:]
            msg.shape.extend(shape)
        elif breakage == "nbytes":
            msg.raw_nbytes = draw(_integers(-2**63, 2**63 - 1))
        elif breakage == "payload":
            msg.payload = draw(st.binary(max_size=64))
        return msg

    return build()


_MESSAGES: dict[tuple[str, int], st.SearchStrategy] = {}


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Random messages of ``descriptor``: every field optional, values near the edges of their types."""
    key = (descriptor.full_name, depth)
    if key not in _MESSAGES:
        if descriptor.full_name == "edgecloud.v1.Tensor":
            _MESSAGES[key] = _tensors()
        else:
            cls = message_factory.GetMessageClass(descriptor)
            fields = {f.name: s for f in descriptor.fields if (s := _field(f, depth)) is not None}
            _MESSAGES[key] = st.fixed_dictionaries({}, optional=fields).map(lambda kw, cls=cls: _build(cls, kw))
    return _MESSAGES[key]


def _build(cls, values: dict):
    msg = cls()
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if _is_message_map(field):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif _is_repeated(field):
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED


def _is_message_map(field: FieldDescriptor) -> bool:
    return field.message_type.fields_by_name["value"].message_type is not None


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy | None:
    t = field.type
    if t in INT_BOUNDS:
        if field.name in ("start_layer",):
            return st.one_of(st.integers(-1, 4), _integers(*INT_BOUNDS[t]))
        if field.name in ("max_tokens", "draft_window", "want_top_k", "past_tokens"):
            return st.one_of(st.integers(0, 8), _integers(*INT_BOUNDS[t]))
        return _integers(*INT_BOUNDS[t])
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if t == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.floats(-2, 2, width=width), st.floats(width=width))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return _strings(field.name)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1) if depth < 3 else None
    return None


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy | None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = _scalar(field.message_type.fields_by_name["key"], depth)
        value = _scalar(field.message_type.fields_by_name["value"], depth)
        return None if key is None or value is None else st.dictionaries(key, value, max_size=4)
    item = _scalar(field, depth)
    if item is None:
        return None
    if _is_repeated(field):
        size = 600 if field.name.endswith("token_ids") else 6
        return st.one_of(st.lists(item, max_size=6), st.lists(item, min_size=size, max_size=size))
    return item


def _templates() -> dict[str, object]:
    """A valid request per input type: the near-valid cases change one or two of its fields."""
    hidden = activation_to_proto(torch.randn(1, 2, HIDDEN), "fp16")
    node = {"node_id": "fuzz-edge", "role": 1, "address": "127.0.0.1:1", "models": ["m"]}
    return {
        "edgecloud.v1.GenerateRequest": generation_pb2.GenerateRequest(
            prompt="def fib(n):", max_tokens=4, policy="max-prob", threshold=0.5),
        "edgecloud.v1.OpenSessionRequest": cloud_node_pb2.OpenSessionRequest(prompt_token_ids=[3, 4, 5]),
        "edgecloud.v1.VerifyRequest": cloud_node_pb2.VerifyRequest(
            context_token_ids=[3, 4], draft_token_ids=[5, 6], open_with=cloud_node_pb2.AcceptanceOptions()),
        "edgecloud.v1.ExtendRequest": cloud_node_pb2.ExtendRequest(session_id="s", token_ids=[3]),
        "edgecloud.v1.RunTailRequest": cloud_node_pb2.RunTailRequest(start_layer=1, hidden_states=hidden,
                                                                     last_position_only=True),
        "edgecloud.v1.RegisterNodeRequest": coordinator_pb2.RegisterNodeRequest(node=node),
        "edgecloud.v1.HeartbeatRequest": coordinator_pb2.HeartbeatRequest(node_id="fuzz-edge"),
        "edgecloud.v1.DeregisterNodeRequest": coordinator_pb2.DeregisterNodeRequest(node_id="fuzz-edge"),
    }


TEMPLATES = _templates()


def _near_valid(descriptor: Descriptor, draw) -> object:
    """The template of ``descriptor`` (or an empty message) with up to two fields drawn at random."""
    cls = message_factory.GetMessageClass(descriptor)
    msg = cls()
    if descriptor.full_name in TEMPLATES:
        msg.CopyFrom(TEMPLATES[descriptor.full_name])
    fields = [f for f in descriptor.fields if _field(f, 0) is not None]
    for field in draw(st.lists(st.sampled_from(fields), max_size=2, unique_by=lambda f: f.name)) if fields else ():
        msg.ClearField(field.name)
        msg.MergeFrom(_build(cls, {field.name: draw(_field(field, 0))}))
    return msg


def _mutated(data: bytes, draw) -> bytes:
    """``data`` truncated, with bytes flipped or inserted."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cut", "flip", "insert"]))
        at = draw(st.integers(0, max(len(out), 1) - 1)) if out else 0
        if op == "cut":
            del out[at:]
        elif op == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(out)


# the fuzz run -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory, make_tiny_pair):
    """Coordinator, cloud (split tail on) and edge (split head on) on port 0, small limits."""
    root = tmp_path_factory.mktemp("fuzz")
    folders = make_tiny_pair(root, (21, 22))
    with DaemonGroup(log_dir=root / "logs") as group:
        coordinator = group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0",
                                                  "--heartbeat-interval-s", "1", "--node-ttl-s", "3",
                                                  "--node-expiry-s", "6", "--max-nodes", "32"])
        cloud = group.start("cloud", ["-m", "edgecloud.cloud_node", "--model", str(folders["llm"]), "--dtype", "fp32",
                                      "--listen", "127.0.0.1:0", "--coordinator", coordinator.address,
                                      "--threads", "1", "--max-sessions", "16", "--max-window-tokens", "256",
                                      "--max-tokens-per-session", "1024"])
        edge = group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(folders["slm"]), "--dtype", "fp32",
                                    "--listen", "127.0.0.1:0", "--coordinator", coordinator.address,
                                    "--cloud", cloud.address, "--split-model", str(folders["llm"]),
                                    "--max-tokens-limit", "16", "--max-prompt-tokens", "256", "--threads", "1",
                                    "--cloud-timeout-s", "10"])
        daemons = {"coordinator": coordinator, "cloud": cloud, "edge": edge}
        channels = {name: grpc.insecure_channel(d.address) for name, d in daemons.items()}
        _wait_registered(channels["coordinator"])
        yield {"daemons": daemons, "channels": channels, "logs": root / "logs"}
        for channel in channels.values():
            channel.close()


def _wait_registered(channel: grpc.Channel) -> None:
    status = channel.unary_unary("/edgecloud.v1.Coordinator/GetClusterStatus",
                                 request_serializer=coordinator_pb2.GetClusterStatusRequest.SerializeToString,
                                 response_deserializer=coordinator_pb2.ClusterStatus.FromString)
    deadline = time.monotonic() + 60
    while len([n for n in status(coordinator_pb2.GetClusterStatusRequest(), timeout=10).nodes if n.live]) < 2:
        assert time.monotonic() < deadline, "nodes did not register"
        time.sleep(0.1)


def call(channel: grpc.Channel, method: str, payload: bytes, streaming: bool) -> tuple[grpc.StatusCode, str]:
    """Send raw request bytes; the status code and message the call ended with."""
    try:
        if streaming:
            for _ in channel.unary_stream(method, request_serializer=None, response_deserializer=None)(
                    payload, timeout=CALL_TIMEOUT_S):
                pass
        else:
            channel.unary_unary(method, request_serializer=None, response_deserializer=None)(
                payload, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return C.OK, ""


def fuzz_service(cluster: dict, name: str, cases: int) -> dict:
    service = SERVICES[name]
    channel = cluster["channels"][name]
    methods = [(f"/{service.full_name}/{m.name}", m) for m in service.methods]
    histogram: Counter[str] = Counter()
    samples: dict[str, str] = {}  # one message per (method, code), for the report
    bad: list[str] = []
    started = time.perf_counter()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_case(data) -> None:
        method, descriptor = data.draw(st.sampled_from(methods))
        kind = data.draw(st.sampled_from(["near-valid", "near-valid", "message", "mutated", "raw"]))
        if kind == "raw":
            payload = data.draw(st.binary(max_size=200))
        elif kind == "near-valid":
            payload = _near_valid(descriptor.input_type, data.draw).SerializeToString()
        else:
            payload = data.draw(messages(descriptor.input_type)).SerializeToString()
            if kind == "mutated":
                payload = _mutated(payload, data.draw)
        code, details = call(channel, method, payload, descriptor.server_streaming)
        key = f"{method.rsplit('/', 1)[1]} {code.name}"
        histogram[key] += 1
        samples.setdefault(key, details[:160])
        ok = code in ALLOWED | EXTRA.get(method, frozenset()) and (code == C.OK or details.strip())
        if not ok and len(bad) < 20:
            bad.append(f"{method} {kind} {payload[:80]!r}... -> {code.name} {details[:200]!r}")

    one_case()
    seconds = time.perf_counter() - started
    codes: Counter[str] = Counter()
    for key, n in histogram.items():
        codes[key.split()[1]] += n
    report = {"service": name, "cases": sum(histogram.values()), "seconds": round(seconds, 1),
              "codes": dict(codes.most_common()), "per_method": dict(sorted(histogram.items())), "samples": samples}
    if path := os.environ.get("EDGECLOUD_FUZZ_REPORT"):
        with Path(path).open("a") as f:
            f.write(json.dumps(report) + "\n")
    assert not bad, "\n".join(bad)
    return report


def _still_serves(cluster: dict, name: str) -> None:
    """Every daemon is alive and a normal request to ``name`` succeeds."""
    for daemon_name, daemon in cluster["daemons"].items():
        assert daemon.process.poll() is None, f"{daemon_name} died; see {cluster['logs']}"
    channel = cluster["channels"][name]
    if name == "cloud":
        verify = channel.unary_unary("/edgecloud.v1.CloudNode/Verify",
                                     request_serializer=cloud_node_pb2.VerifyRequest.SerializeToString,
                                     response_deserializer=cloud_node_pb2.VerifyResponse.FromString)
        reply = verify(cloud_node_pb2.VerifyRequest(context_token_ids=[3, 4, 5], draft_token_ids=[6, 7],
                                                    open_with=cloud_node_pb2.AcceptanceOptions()), timeout=60)
        assert len(reply.llm_token_ids) >= 1
        return
    service = "Coordinator" if name == "coordinator" else "EdgeNode"
    _wait_registered(cluster["channels"]["coordinator"])  # fuzzed registrations may have filled the table
    generate = channel.unary_stream(f"/edgecloud.v1.{service}/Generate",
                                    request_serializer=generation_pb2.GenerateRequest.SerializeToString,
                                    response_deserializer=generation_pb2.GenerateEvent.FromString)
    request = generation_pb2.GenerateRequest(prompt="def fib(n):", max_tokens=4, policy="max-prob", threshold=0.5)
    events = list(generate(request, timeout=120))
    assert events[-1].HasField("summary")


@pytest.mark.parametrize("name", ["cloud", "edge", "coordinator"])
def test_fuzz(cluster: dict, name: str) -> None:
    fuzz_service(cluster, name, FUZZ_CASES)
    _still_serves(cluster, name)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", ["cloud", "edge", "coordinator"])
def test_fuzz_10k(cluster: dict, name: str) -> None:
    fuzz_service(cluster, name, SLOW_CASES)
    _still_serves(cluster, name)
