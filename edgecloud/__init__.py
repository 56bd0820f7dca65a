"""edgecloud: distributed edge-cloud collaborative inference.

The shared core: generated wire stubs (``edgecloud.v1``), tensor wire format, the
Llama-family model runtime and loaders, the model zoo, configuration, the client SDK and
the CLI. Heavy modules are imported lazily so that ``import edgecloud`` stays cheap.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``edgecloud.Client`` and friends, imported on first use."""
    if name in ("Client", "AsyncClient", "EdgecloudError", "TokenEvent", "Summary"):
        from edgecloud import client

        return getattr(client, name)
    raise AttributeError(f"module 'edgecloud' has no attribute {name!r}")
