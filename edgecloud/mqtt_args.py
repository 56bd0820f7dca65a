"""Command-line arguments of the telemetry and discovery plane (MQTT), for the ``__main__`` modules."""

from __future__ import annotations

import argparse
import os

from edgecloud.mqtt import MqttConfig

NO_EMBEDDED = "none"


def add_mqtt_args(parser: argparse.ArgumentParser, *, coordinator: bool = False) -> None:
    group = parser.add_argument_group("telemetry and discovery (MQTT)")
    default_help = ("default: $EDGECLOUD_MQTT_URL; none: the coordinator embeds a broker on --mqtt-listen"
                    if coordinator else "default: $EDGECLOUD_MQTT_URL; none: no telemetry")
    group.add_argument("--mqtt-url", default=os.environ.get("EDGECLOUD_MQTT_URL") or None,
                       help=f"broker, mqtt://[user:pass@]host:port (mqtts:// for TLS, verified with --tls-ca) "
                            f"({default_help})")
    group.add_argument("--cluster", default=os.environ.get("EDGECLOUD_CLUSTER", "default"),
                       help="cluster name: topics are edgecloud/<cluster>/nodes/<node-id>/... (default: "
                            "$EDGECLOUD_CLUSTER or 'default')")
    if coordinator:
        group.add_argument("--mqtt-listen", default="127.0.0.1:1883",
                           help="without --mqtt-url: the embedded broker's loopback host:port (0: any free port; "
                                "a taken port falls back to a free one, logged); 'none': no telemetry")
    else:
        group.add_argument("--mqtt-load-interval-s", type=float, default=1.0,
                           help="how often load and link estimates are published")


def mqtt_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser, url: str | None = None
                   ) -> MqttConfig | None:
    """The MQTT settings (``url`` overrides ``--mqtt-url``); None without a URL. Errors exit 2 through ``parser``."""
    url = url or args.mqtt_url
    if not url:
        return None
    try:
        return MqttConfig(url=url, cluster=args.cluster, tls_ca_path=args.tls_ca,
                          load_interval_s=getattr(args, "mqtt_load_interval_s", 1.0))
    except ValueError as exc:
        parser.error(str(exc))
