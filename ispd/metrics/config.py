from __future__ import annotations

from ispd.configtypes import ListenAddress, Section, SocketAddress


class MetricsConfig(Section):
    enabled: bool = True
    # Serves /metrics (Prometheus text format) and /healthz. Loopback by default: expose it to your
    # Prometheus server deliberately, it tells a lot about the network.
    listen: ListenAddress = SocketAddress("127.0.0.1", 9520)
