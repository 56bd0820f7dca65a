"""Split computing across real edge and cloud daemons (port 0, tiny models, fp32, lossless codec)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch

from edgecloud import Client, EdgecloudError
from edgecloud.activations import activation_to_proto
from edgecloud.client import Summary, TokenEvent
from edgecloud.kernels.codecs import decode, encode
from edgecloud.models.generate import generate_ids
from edgecloud.models.loader import load_model
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.processes import DaemonGroup
from edgecloud.split.llm import SplitHead, SplitTail
from edgecloud.v1 import cloud_node_pb2, cloud_node_pb2_grpc
from edgecloud.wire import tensor_from_proto, tensor_to_proto

PROMPT = "def fib(n):"
MAX = 24
CUT = 1


@pytest.fixture(scope="module")
def split_cluster(tmp_path_factory, make_tiny_pair, tiny_guard):
    """A cloud node (the tiny LLM) and an edge node serving the LLM's head (cut after layer 1)."""
    root = tmp_path_factory.mktemp("split")
    folders = make_tiny_pair(root, tiny_guard.pair_seeds)
    with DaemonGroup(log_dir=root / "logs") as group:
        cloud = group.start("cloud", ["-m", "edgecloud.cloud_node", "--model", str(folders["llm"]), "--dtype", "fp32",
                                      "--listen", "127.0.0.1:0", "--threads", "1"])
        edge = group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(folders["slm"]), "--dtype", "fp32",
                                    "--listen", "127.0.0.1:0", "--cloud", cloud.address, "--threads", "1",
                                    "--split-model", str(folders["llm"]), "--split-cuts", str(CUT),
                                    "--split-codecs", "fp32", "--max-tokens-limit", "64"])
        yield {"cloud": cloud, "edge": edge, "folders": folders}


@pytest.fixture(scope="module")
def llm_model(split_cluster):
    return load_model(split_cluster["folders"]["llm"], dtype=torch.float32)


def _generate(address: str, **kwargs) -> tuple[list[int], Summary]:
    with Client(address, timeout_s=60) as client:
        events = list(client.generate(PROMPT, max_tokens=MAX, policy="split", **kwargs))
    summary = events[-1]
    assert isinstance(summary, Summary)
    return [e.token_id for e in events if isinstance(e, TokenEvent) and e.token_id >= 0], summary


def _llm_greedy(folder) -> list[int]:
    tokenizer = Tokenizer.from_folder(folder)
    model = load_model(folder, dtype=torch.float32)
    return list(generate_ids(model, tokenizer.prompt_ids(PROMPT), max_new_tokens=MAX,
                             stop_ids=tokenizer.eos_token_ids))


def test_split_generation_equals_the_whole_models_greedy_output(split_cluster) -> None:
    ids, summary = _generate(split_cluster["edge"].address)
    assert ids == _llm_greedy(split_cluster["folders"]["llm"])
    assert summary.policy == "split" and summary.cloud_tokens == len(ids)
    assert summary.cloud_round_trips == len(ids)  # prompt in one chunk, then one position per token
    assert summary.bytes_up > 32 * 4 * (summary.prompt_tokens + len(ids) - 1)  # fp32 hidden states went up


def _run_tail(address: str, request: cloud_node_pb2.RunTailRequest) -> cloud_node_pb2.RunTailResponse:
    async def call():
        async with grpc.aio.insecure_channel(address) as channel:
            return await cloud_node_pb2_grpc.CloudNodeStub(channel).RunTail(request, timeout=30)
    return asyncio.run(call())


def test_run_tail_gives_the_logits_of_local_execution(split_cluster, llm_model) -> None:
    ids = torch.tensor([[3, 14, 15, 9, 2, 6, 5, 35]])
    head = SplitHead(llm_model, CUT)
    hidden = head.forward(ids, head.new_cache())
    reply = _run_tail(split_cluster["cloud"].address, cloud_node_pb2.RunTailRequest(
        start_layer=CUT, hidden_states=activation_to_proto(hidden, "fp32")))
    logits = tensor_from_proto(reply.logits, max_bytes=2**20, expected_shape=(1, 8, None))
    with torch.inference_mode():
        torch.testing.assert_close(logits, llm_model(ids), atol=1e-5, rtol=0)
    assert reply.next_token_ids == [int(logits[0, -1].argmax())]


def _bad_requests(hidden: torch.Tensor):
    good = activation_to_proto(hidden, "fp32")
    truncated = cloud_node_pb2.RunTailRequest(start_layer=CUT, hidden_states=good)
    truncated.hidden_states.payload = good.payload[:-4]
    huge = cloud_node_pb2.RunTailRequest(start_layer=CUT, hidden_states=good)
    del huge.hidden_states.shape[:]
    huge.hidden_states.shape.extend([1, 10**9, hidden.shape[2]])
    huge.hidden_states.raw_nbytes = 10**9 * hidden.shape[2] * 4
    wrong = cloud_node_pb2.RunTailRequest(start_layer=CUT, hidden_states=tensor_to_proto(hidden[..., :7]))
    nan = cloud_node_pb2.RunTailRequest(start_layer=CUT, hidden_states=tensor_to_proto(hidden * float("nan")))
    layer = cloud_node_pb2.RunTailRequest(start_layer=99, hidden_states=good)
    return [(truncated, grpc.StatusCode.INVALID_ARGUMENT), (huge, grpc.StatusCode.RESOURCE_EXHAUSTED),
            (wrong, grpc.StatusCode.INVALID_ARGUMENT), (nan, grpc.StatusCode.INVALID_ARGUMENT),
            (layer, grpc.StatusCode.INVALID_ARGUMENT)]


def test_bad_payloads_are_refused_and_the_cloud_keeps_serving(split_cluster, llm_model) -> None:
    head = SplitHead(llm_model, CUT)
    hidden = head.forward(torch.tensor([[3, 14, 15]]), head.new_cache())
    for request, code in _bad_requests(hidden):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _run_tail(split_cluster["cloud"].address, request)
        assert info.value.code() == code, info.value.details()
    reply = _run_tail(split_cluster["cloud"].address, cloud_node_pb2.RunTailRequest(
        start_layer=CUT, hidden_states=activation_to_proto(hidden, "fp32"), omit_logits=True))
    assert len(reply.next_token_ids) == 1 and not reply.HasField("logits")


def test_split_requests_the_node_cannot_serve_are_refused(split_cluster) -> None:
    with pytest.raises(EdgecloudError) as info:
        _generate(split_cluster["edge"].address, temperature=0.7)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "greedy" in info.value.message


@pytest.mark.parametrize("codec", ["fp16", "int8-token+lz4", "int4-g8", "int8-hadamard"])
def test_the_cloud_decodes_every_codec_as_the_edge_encoded_it(split_cluster, llm_model, codec) -> None:
    ids = torch.tensor([[3, 14, 15, 9, 2, 6, 5, 35]])
    head, tail = SplitHead(llm_model, CUT), SplitTail(llm_model, CUT)
    hidden = head.forward(ids, head.new_cache())
    reply = _run_tail(split_cluster["cloud"].address, cloud_node_pb2.RunTailRequest(
        start_layer=CUT, hidden_states=activation_to_proto(hidden, codec)))
    logits = tensor_from_proto(reply.logits, max_bytes=2**20, expected_shape=(1, 8, None))
    torch.testing.assert_close(logits, tail.forward(decode(encode(hidden, codec)), tail.new_cache()),
                               atol=1e-5, rtol=0)


def test_a_corrupt_compressed_payload_is_refused(split_cluster, llm_model) -> None:
    head = SplitHead(llm_model, CUT)
    msg = activation_to_proto(head.forward(torch.tensor([[3, 14, 15, 9]]), head.new_cache()), "int8-token+lz4")
    msg.payload = msg.payload[:len(msg.payload) // 2]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _run_tail(split_cluster["cloud"].address, cloud_node_pb2.RunTailRequest(start_layer=CUT, hidden_states=msg))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
