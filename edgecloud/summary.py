"""A request's summary: the router's ``Accounting`` plus who served it, and its wire form.

One structure end to end: the edge fills an ``Accounting``, ``to_proto`` copies it field by
field into ``GenerationSummary`` (the field names are the same), and the SDK's ``from_proto``
copies them back into a ``Summary``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgecloud.routing.router import Accounting
from edgecloud.v1 import generation_pb2

FINISH_TO_PROTO = {"length": generation_pb2.FINISH_REASON_LENGTH, "eos": generation_pb2.FINISH_REASON_EOS,
                   "stop": generation_pb2.FINISH_REASON_STOP, "cancelled": generation_pb2.FINISH_REASON_CANCELLED}
FINISH_FROM_PROTO = {code: name for name, code in FINISH_TO_PROTO.items()}
ACCOUNTING_FIELDS = tuple(f.name for f in fields(Accounting))


@dataclass
class Summary(Accounting):
    """Accounting of one request (the final event of every stream) and the nodes that served it."""

    policy: str = ""
    threshold: float | None = None
    edge_node_id: str = ""
    cloud_node_id: str = ""


def to_proto(acc: Accounting, **served_by) -> generation_pb2.GenerationSummary:
    """The wire summary of ``acc``; ``served_by``: policy, threshold, edge_node_id, cloud_node_id."""
    msg = generation_pb2.GenerationSummary(cloud_share=acc.cloud_share, **served_by)
    for name in ACCOUNTING_FIELDS:
        value = getattr(acc, name)
        if name == "finish_reason":
            msg.finish_reason = FINISH_TO_PROTO.get(value, generation_pb2.FINISH_REASON_UNSPECIFIED)
        elif name == "window_sizes":
            msg.window_sizes.extend(value)
        else:
            setattr(msg, name, value)
    return msg


def from_proto(msg: generation_pb2.GenerationSummary) -> Summary:
    values = {name: getattr(msg, name) for name in ACCOUNTING_FIELDS}
    values["finish_reason"] = FINISH_FROM_PROTO.get(msg.finish_reason, "")
    values["window_sizes"] = list(msg.window_sizes)
    return Summary(**values, policy=msg.policy, threshold=msg.threshold if msg.HasField("threshold") else None,
                   edge_node_id=msg.edge_node_id, cloud_node_id=msg.cloud_node_id)
