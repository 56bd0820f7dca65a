"""edgecloud.coordinator: node registry and credentials, placement, request accounting, client-facing API."""
