"""The whole client config behind ``v2sync run LINK`` and ``v2sync link import``: a SOCKS5
inbound (UDP on) and an HTTP proxy inbound on loopback, and one outbound per link. Several
links become a balancer (4.34 ``routing.balancers``: a random pick among the outbounds
whose tag starts with the selector) that every connection goes through."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from v2sync.infra.share.model import ShareLink
from v2sync.infra.share.outbounds import to_outbound

DEFAULT_SOCKS_PORT = 1080
DEFAULT_HTTP_PORT = 8080
DEFAULT_LISTEN = "127.0.0.1"
PROXY_TAG = "proxy"
BALANCER_TAG = "balancer"


def client_config(links: Sequence[ShareLink], socks_port: int = DEFAULT_SOCKS_PORT,
                  http_port: int = DEFAULT_HTTP_PORT, listen: str = DEFAULT_LISTEN,
                  loglevel: str = "warning") -> Dict[str, Any]:
    if not links:
        raise ValueError("a client config needs at least one link")
    single = len(links) == 1
    tags = [PROXY_TAG if single else f"{PROXY_TAG}-{i}" for i in range(1, len(links) + 1)]
    config: Dict[str, Any] = {
        "log": {"loglevel": loglevel},
        "inbounds": [
            {"tag": "socks-in", "protocol": "socks", "listen": listen, "port": socks_port,
             "settings": {"auth": "noauth", "udp": True, "ip": listen}},
            {"tag": "http-in", "protocol": "http", "listen": listen, "port": http_port,
             "settings": {}},
        ],
        "outbounds": [to_outbound(link, tag) for link, tag in zip(links, tags)],
    }
    if not single:
        config["routing"] = _balancer_routing()
    return config


def _balancer_routing() -> Dict[str, Any]:
    rules: List[Dict[str, Any]] = [{"type": "field", "network": "tcp,udp",
                                    "balancerTag": BALANCER_TAG}]
    return {"balancers": [{"tag": BALANCER_TAG, "selector": [PROXY_TAG + "-"]}], "rules": rules}
