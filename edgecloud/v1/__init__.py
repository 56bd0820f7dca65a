"""Generated gRPC/protobuf stubs for proto/edgecloud/v1 (do not edit; regenerate with `python -m edgecloud.protogen`)."""
