"""The committed stubs in edgecloud/v1 are exactly what the .proto sources generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud import protogen

pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is not installed (pip install -e '.[dev]')")


def test_committed_stubs_match_proto_sources(tmp_path: Path) -> None:
    fresh = {p.name: p for p in protogen.generate(tmp_path)}
    committed = {p.name: p for p in protogen.generated_files(protogen.REPO_ROOT)}
    regen = "regenerate with `python -m edgecloud.protogen` and commit"
    missing = sorted(set(fresh) - set(committed))
    assert not missing, f"stubs not committed in edgecloud/v1: {missing}; {regen}"
    stale = sorted(set(committed) - set(fresh))
    assert not stale, f"stubs in edgecloud/v1 with no .proto source: {stale}; delete them or {regen}"
    differ = sorted(name for name in fresh if fresh[name].read_bytes() != committed[name].read_bytes())
    assert not differ, f"committed stubs differ from the .proto sources: {differ}; {regen}"


def test_every_proto_is_in_package_edgecloud_v1() -> None:
    for rel in protogen.proto_files():
        text = (protogen.PROTO_ROOT / rel).read_text()
        assert 'syntax = "proto3";' in text, rel
        assert "package edgecloud.v1;" in text, rel


def test_services_expose_the_contract() -> None:
    from edgecloud.v1 import cloud_node_pb2_grpc, coordinator_pb2_grpc, edge_node_pb2_grpc

    expected = {
        coordinator_pb2_grpc.CoordinatorServicer: {"Generate", "GetClusterStatus", "RegisterNode", "Heartbeat"},
        edge_node_pb2_grpc.EdgeNodeServicer: {"Generate", "GetStatus"},
        cloud_node_pb2_grpc.CloudNodeServicer: {"OpenSession", "CloseSession", "Extend", "Verify", "RunTail",
                                                "GetStatus"},
    }
    for servicer, methods in expected.items():
        assert methods <= set(vars(servicer)), (servicer.__name__, methods - set(vars(servicer)))
