"""
The fleet's figures on the daemon's ``/metrics``, read from the client at scrape time.

Counters and gauges are computed from ``Fleet.stats`` when Prometheus asks,
so the fleet client keeps plain integers and needs no prometheus import.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hastaple.stores.fleet import SEEN_WITHIN, Fleet

_COUNTERS = (
    ("hits", "Staples taken from the fleet instead of asking the CA."),
    ("misses", "Staples asked from the CA because the fleet had none usable."),
    ("rejected", "Fleet entries that failed validation (forged, garbage, older, another's)."),
    ("lease_waits", "Waits for another node's fetch of the same staple."),
    ("fallbacks", "Waits that ended without a staple: the CA was asked anyway."),
    ("published", "Staples this node stored in the fleet."),
    ("outages", "Times the fleet's Redis stopped answering."),
)


class FleetCollector(Collector):
    """``hastaple_fleet_*``: up, nodes seen, hits, misses, waits, fallbacks, by node."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        """Yield the figures as they are now."""
        fleet = self.fleet
        yield GaugeMetricFamily(
            "hastaple_fleet_up", "1 while the fleet's Redis answers, else 0.", value=int(fleet.up)
        )
        yield GaugeMetricFamily(
            "hastaple_fleet_nodes",
            f"Nodes whose heartbeat is at most {int(SEEN_WITHIN)} s old (this node included).",
            value=len(fleet.seen),
        )
        for name, text in _COUNTERS:
            yield CounterMetricFamily(
                f"hastaple_fleet_{name}", text, value=getattr(fleet.stats, name)
            )
        by_node = CounterMetricFamily(
            "hastaple_fleet_staples_from",
            "Staples taken from the fleet, by the node that fetched them.",
            labels=["node"],
        )
        for node, count in sorted(fleet.stats.fetched_by.items()):
            by_node.add_metric([node], count)
        yield by_node
