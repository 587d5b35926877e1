"""The protocol chains of tools/bench.py, by name, for scenario tests that run each one in
this process: ``CHAINS[name](entry_port)`` gives the configs, servers first
(``running_instance`` each), with a SOCKS5 inbound on ``entry_port``."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench  # noqa: E402

CHAINS = {
    "relay": lambda port: [bench.socks_freedom_config(port, access="none")],
    "vmess": bench.vmess_pair_configs,
    "vmess-tls": lambda port: bench.vmess_pair_configs(port, *bench.tls_streams()),
    "vmess-ws-tls": lambda port: bench.vmess_pair_configs(port, *bench.wss_streams()),
    "vless-tls": lambda port: bench.keyed_pair_configs("vless", port),
    "trojan-tls": lambda port: bench.keyed_pair_configs("trojan", port),
    "shadowsocks": bench.ss_pair_configs,
    "vmess-mux": bench.mux_pair_configs,
    "socks-out": lambda port: bench.chained_configs("socks", port),
    "http-out": lambda port: bench.chained_configs("http", port),
}
