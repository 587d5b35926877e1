"""A prober without a key sends noise in one or two writes and holds its side open.

How the server then ends the connection tells how much it read: a server that closes with
bytes unread makes its kernel send a reset, one that read them all a FIN. 4.34 reads in
its buffers' sizes (a first read of 2 KiB, then ``readv`` into more buffers while they come
back full), so v2sync reads as it does (``GoReads``): v2ray 4.34 and v2sync run one config
(VMess and Shadowsocks, which drain a rejected client, VLESS and Trojan without fallbacks,
which read once and close) and get the same noise; each connection must end the same way
on both. The cases are chosen so the ending does not depend on the drain's size, which
4.34 draws from Go's generator: 1,500 bytes are read whole by the first read; 100 bytes,
then 20,000, leave more than the largest drain (3,385 bytes) after 4.34's next two reads.
(v2sync read 4 KiB first and drained in 64 KiB reads, and ended the last cases with a FIN.)
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence, Tuple

from scenarios.helpers_scenarios import connect, how_it_ends
from scenarios.vmess_helpers import make_process
from support.peers import free_port

USER_ID = "9d6f3a52-6c1e-4b0f-9a3d-2e7b5c8f1a04"
PASSWORD = "probe-endings"
HANDSHAKE = 2  # seconds: policy.levels.0.handshake, a drain's deadline
ENDING_WAIT = HANDSHAKE + 4.0
PAUSE = 0.3  # between two writes: the server has read the first and waits for more

SETTINGS = {
    "vmess": {"clients": [{"id": USER_ID, "alterId": 0}]},
    "shadowsocks": {"method": "aes-128-gcm", "password": PASSWORD},
    "vless": {"clients": [{"id": USER_ID}], "decryption": "none"},
    "trojan": {"clients": [{"password": PASSWORD}]},
}
# (protocol, the sizes of the writes, how 4.34 ends it)
CASES: List[Tuple[str, Sequence[int], str]] = [
    ("vmess", (1500,), "fin"), ("vmess", (100, 20000), "reset"),
    ("shadowsocks", (1500,), "fin"), ("shadowsocks", (100, 20000), "reset"),
    ("vless", (1500,), "fin"), ("vless", (3000,), "reset"),
    ("trojan", (1500,), "fin"), ("trojan", (3000,), "reset"),
]


def _config(ports: Dict[str, int]) -> Dict[str, object]:
    inbounds = [{"tag": protocol, "protocol": protocol, "listen": "127.0.0.1",
                 "port": ports[protocol], "settings": settings}
                for protocol, settings in SETTINGS.items()]
    return {"log": {"loglevel": "warning", "access": "none"}, "inbounds": inbounds,
            "outbounds": [{"protocol": "freedom", "settings": {}}],
            "policy": {"levels": {"0": {"handshake": HANDSHAKE}}}}


def _noise(size: int, seed: int) -> bytes:
    """Random bytes; the first is not 0, so no VLESS version byte is valid."""
    data = bytearray(random.Random(seed).randbytes(size))
    data[0] |= 1
    return bytes(data)


def _ending(port: int, writes: Sequence[int], seed: int) -> str:
    with connect(port, timeout=ENDING_WAIT) as sock:
        for index, size in enumerate(writes):
            if index:
                time.sleep(PAUSE)
            sock.sendall(_noise(size, seed + index))
        return how_it_ends(sock, ENDING_WAIT) or "still open"


def _endings(implementation: str) -> List[str]:
    ports = {protocol: free_port() for protocol in SETTINGS}
    with make_process(implementation, _config(ports)):
        with ThreadPoolExecutor(len(CASES)) as pool:
            futures = [pool.submit(_ending, ports[protocol], writes, seed)
                       for seed, (protocol, writes, _) in enumerate(CASES)]
            return [future.result() for future in futures]


def test_noise_ends_as_in_4_34_whatever_the_drain_size() -> None:
    expected = [ending for _, _, ending in CASES]
    names = [f"{protocol} {'+'.join(map(str, writes))}" for protocol, writes, _ in CASES]
    reference = dict(zip(names, _endings("v2ray")))
    assert list(reference.values()) == expected, reference  # the cases' claim, on 4.34
    assert dict(zip(names, _endings("v2sync"))) == reference
