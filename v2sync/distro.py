"""Every protocol package v2sync ships (v2ray ``main/distro/all/all.go``).

Importing a package registers it (``common.registry``); a package not listed here does not
exist as far as configs are concerned.
"""
# Inbounds
from v2sync.proxy.dokodemo import inbound as _dokodemo_inbound  # noqa: F401
from v2sync.proxy.http import inbound as _http_inbound  # noqa: F401
from v2sync.proxy.shadowsocks import inbound as _ss_inbound  # noqa: F401
from v2sync.proxy.socks import inbound as _socks_inbound  # noqa: F401
from v2sync.proxy.vmess import inbound as _vmess_inbound  # noqa: F401
from v2sync.proxy.vless import inbound as _vless_inbound  # noqa: F401
from v2sync.proxy.trojan import inbound as _trojan_inbound  # noqa: F401

# Outbounds
from v2sync.proxy.blackhole import outbound as _blackhole_outbound  # noqa: F401
from v2sync.proxy.dns import outbound as _dns_outbound  # noqa: F401
from v2sync.proxy.freedom import outbound as _freedom_outbound  # noqa: F401
from v2sync.proxy.shadowsocks import outbound as _ss_outbound  # noqa: F401
from v2sync.proxy.http import outbound as _http_outbound  # noqa: F401
from v2sync.proxy.socks import outbound as _socks_outbound  # noqa: F401
from v2sync.proxy.vmess import outbound as _vmess_outbound  # noqa: F401
from v2sync.proxy.vless import outbound as _vless_outbound  # noqa: F401
from v2sync.proxy.trojan import outbound as _trojan_outbound  # noqa: F401

# Stream transports (streamSettings.network)
from v2sync.transport.internet import tcp as _tcp_transport  # noqa: F401,E402
from v2sync.transport.internet import domainsocket as _ds_transport  # noqa: F401,E402
from v2sync.transport.internet.websocket import transport as _ws_transport  # noqa: F401,E402
