"""Nothing of h2, protobuf or prometheus-client is imported for a config without ``api`` or
metrics; with them, they are (so the check can fail). Likewise pyOpenSSL loads only with a
TLS client, and pycryptodome with none of them at start."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers_scenarios import cli_env, freedom, make_config, socks_inbound

PROBE = """
import json, sys
from v2sync.core import Instance
from v2sync.infra.conf.builder import config_from_dict
instance = Instance(config_from_dict(json.loads(sys.argv[1])))
instance.start()
instance.close(grace=0)
roots = ("h2", "hpack", "hyperframe", "google", "prometheus_client", "grpc", "OpenSSL", "Crypto")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in roots})))
"""


def loaded_roots(config: dict) -> list:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(config)],
                            capture_output=True, text=True, timeout=60, env=cli_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_api_no_metrics_imports_none_of_them() -> None:
    config = make_config([socks_inbound()], [freedom()])
    config["stats"] = {}  # counters alone need none of them either
    assert loaded_roots(config) == []


def test_api_and_metrics_import_them() -> None:
    config = make_config([socks_inbound()], [freedom()])
    config.update(api={"tag": "api", "services": ["StatsService"]},
                  metrics={"listen": "127.0.0.1:0"})
    assert loaded_roots(config) == ["google", "h2", "hpack", "hyperframe", "prometheus_client"]


def test_a_tls_client_imports_pyopenssl_and_nothing_else() -> None:
    outbound = {"protocol": "vmess", "settings": {"vnext": [{
        "address": "127.0.0.1", "port": 9, "users": [{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}]}]},
        "streamSettings": {"network": "ws", "security": "tls",
                           "tlsSettings": {"serverName": "v2sync.test"}}}
    assert loaded_roots(make_config([socks_inbound()], [outbound])) == ["OpenSSL"]
