"""edgecloud.simulator: link model, shaping proxy, experiment runner, discrete-event fleet mode.

Modules (nothing is imported here, so ``edgecloud.cli`` stays light):

- ``profiles``/``presets``/``traces``: link profiles (frozen, validated), named presets, Mahimahi traces;
- ``link_model``: the pure model (bytes and arrival time → delivery time), reusable without sockets;
- ``proxy``: ``ShapingProxy``, the asyncio TCP proxy that applies a profile to real connections;
- ``control``/``metrics``/``config``: ``NetemServer`` (HTTP+JSON control API, ``/metrics``), links.toml;
- ``experiment``: experiment files for ``edgecloud simulate``; ``netns``: the kernel backend (root);
- ``measure``/``background``: loopback measurement tools and a loop-on-a-thread helper;
- ``cli``: the ``edgecloud netem`` sub-app (``python -m edgecloud.simulator``).
"""
