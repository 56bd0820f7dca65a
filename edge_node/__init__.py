"""edgecloud.edge_node: the edge daemon (SLM runner, split head, tensor-parallel worker)."""
