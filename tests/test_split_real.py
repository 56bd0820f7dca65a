"""Split computing of the real Qwen2.5-Coder-1.5B through real edge and cloud daemons: greedy output at a
middle cut with a lossless codec equals the whole model's (bf16 on both sides, same kernels)."""

from __future__ import annotations

import pytest
import torch

from edgecloud import Client
from edgecloud.client import Summary, TokenEvent
from edgecloud.models import zoo
from edgecloud.models.generate import generate_ids
from edgecloud.models.loader import load_model
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.processes import DaemonGroup

pytestmark = pytest.mark.slow
PROMPT = "Write a Python function that checks whether a string is a palindrome."
TOKENS = 16


def test_real_model_split_through_the_daemons_equals_the_whole_model(real_llm_folder, tmp_path) -> None:
    folder = real_llm_folder
    tokenizer = Tokenizer.from_folder(folder)
    model = load_model(folder, dtype=torch.bfloat16)
    expected = list(generate_ids(model, tokenizer.prompt_ids(PROMPT), max_new_tokens=TOKENS,
                                 stop_ids=tokenizer.eos_token_ids))
    del model
    slm = zoo.pull("smollm2-135m-instruct", progress=False)
    with DaemonGroup(log_dir=tmp_path) as group:
        cloud = group.start("cloud", ["-m", "edgecloud.cloud_node", "--model", str(folder), "--listen", "127.0.0.1:0",
                                      "--dtype", "bf16", "--threads", "1"])
        edge = group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(slm), "--listen", "127.0.0.1:0",
                                    "--dtype", "bf16", "--threads", "1", "--cloud", cloud.address,
                                    "--split-model", str(folder), "--split-cuts", "14", "--split-codecs", "fp32"])
        with Client(edge.address, timeout_s=600) as client:
            events = list(client.generate(PROMPT, max_tokens=TOKENS, policy="split"))
    summary = events[-1]
    assert isinstance(summary, Summary) and summary.split_cut == 14 and summary.split_codec == "fp32"
    assert [e.token_id for e in events if isinstance(e, TokenEvent) and e.token_id >= 0] == expected
