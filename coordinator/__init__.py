"""edgecloud.coordinator: node registry, token router and policies, planners, client-facing API."""
