"""ShareLinks to 4.34 config JSON and back.

``to_outbound`` writes the outbound a link describes, as 4.34 spells it (``vnext`` for
VMess and VLESS, ``servers`` for Trojan and Shadowsocks, ``streamSettings`` for the
transport and TLS). ``from_config`` reads links back from a config's raw JSON: one per
user of every VMess, VLESS, Trojan and Shadowsocks outbound, and, given the host name
clients dial, one per user of every such inbound (a server's config). It reads the JSON
as written (keys matched case-insensitively, as 4.34 does) and does not need the protocol
to be one v2sync runs: a link is checked by ``model.check`` like any other.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Mapping, Optional, Sequence

from v2sync.common.errors import ConfigError, join_path
from v2sync.infra.share.model import (PROTOCOLS, SHADOWSOCKS, SS_METHODS, TROJAN, VLESS, VMESS,
                                      ShareLink, check)

WILDCARD_LISTEN = ("", "0.0.0.0", "::")


def to_outbound(link: ShareLink, tag: str) -> Dict[str, Any]:
    outbound: Dict[str, Any] = {"tag": tag, "protocol": link.protocol,
                                "settings": _settings(link), "streamSettings": _stream(link)}
    return outbound


def _settings(link: ShareLink) -> Dict[str, Any]:
    server: Dict[str, Any] = {"address": link.address, "port": link.port}
    if link.protocol == VMESS:
        server["users"] = [{"id": link.secret, "alterId": link.alter_id,
                            "security": link.method or "auto"}]
        return {"vnext": [server]}
    if link.protocol == VLESS:
        server["users"] = [{"id": link.secret, "encryption": "none"}]
        return {"vnext": [server]}
    if link.protocol == SHADOWSOCKS:
        server.update(method=link.method, password=link.secret)
    else:
        server["password"] = link.secret
    return {"servers": [server]}


def _stream(link: ShareLink) -> Dict[str, Any]:
    stream: Dict[str, Any] = {"network": link.network, "security": link.security}
    hosts = [h.strip() for h in link.host.split(",") if h.strip()]
    if link.network == "ws":
        ws: Dict[str, Any] = {"path": link.path or "/"}
        if hosts:
            ws["headers"] = {"Host": hosts[0]}
        stream["wsSettings"] = ws
    elif link.header_type == "http":
        request: Dict[str, Any] = {"path": [link.path or "/"]}
        if hosts:
            request["headers"] = {"Host": hosts}
        stream["tcpSettings"] = {"header": {"type": "http", "request": request}}
    if link.security == "tls":
        tls: Dict[str, Any] = {}
        # An empty serverName makes 4.34 use the address dialled; v2rayN sends the
        # WebSocket host when a link has no sni, and so do we.
        server_name = link.sni or (hosts[0] if hosts else "")
        if server_name:
            tls["serverName"] = server_name
        if link.alpn:
            tls["alpn"] = list(link.alpn)
        stream["tlsSettings"] = tls
    return stream


# --------------------------------------------------------------------------- back to links

def from_config(data: Mapping[str, Any], file: str, host: Optional[str],
                notes: Optional[List[str]] = None) -> List[ShareLink]:
    """Links for the outbounds of ``data`` and, with ``host``, for its inbounds. An inbound
    that listens on loopback or a unix socket and that another inbound's fallback leads to
    gets a link through that inbound (its port and TLS). Otherwise a unix socket has no
    link, and a loopback one keeps its own; ``notes`` gets a line for each."""
    links: List[ShareLink] = []
    for path, handler in _handlers(data, "outbound"):
        links += _located(file, path, lambda h=handler, p=path: _outbound_links(h, p))
    inbounds = _handlers(data, "inbound")
    for path, handler in inbounds:
        if _protocol(handler) is None:
            continue
        if host is None:
            raise ConfigError("is a server inbound: the links need the host name clients "
                              "dial", path, file, expected="--host NAME")
        reach = _reach(handler, [h for _, h in inbounds], f"{file}: {path}", notes)
        if reach is not _UNREACHABLE:
            links += _located(file, path, lambda h=handler, f=reach: _inbound_links(h, host, f))
    return links


_UNREACHABLE = object()


def _reach(handler: Mapping[str, Any], inbounds: Sequence[Any], where: str,
           notes: Optional[List[str]]) -> Any:
    """How clients reach ``handler``: None (directly), the inbound whose fallback leads
    here, or ``_UNREACHABLE`` (a unix socket no fallback leads to). A local-only one that
    no fallback leads to gets a line in ``notes``."""
    if not _local_only(handler):
        return None
    front = _front_for(handler, inbounds)
    if front is not None:
        return front
    listen = str(_key(handler, "listen") or "")
    unix = _unix_socket(listen)
    if notes is not None:
        what = "no link" if unix else "its link reaches only this machine"
        notes.append(f"{where}: listens on {listen} and no fallback leads to it: {what}")
    return _UNREACHABLE if unix else None


def _unix_socket(listen: str) -> bool:
    return listen.startswith(("/", "@"))


def _local_only(handler: Mapping[str, Any]) -> bool:
    """Listening where no client can dial: loopback, or a unix socket (a path, ``@name``)."""
    listen = str(_key(handler, "listen") or "").strip()
    if _unix_socket(listen) or listen == "localhost":
        return True
    try:
        return ipaddress.ip_address(listen).is_loopback
    except ValueError:
        return False


def _front_for(handler: Mapping[str, Any], inbounds: Sequence[Any]) -> Optional[Any]:
    """The inbound whose fallback ``dest`` is ``handler``'s port or socket path."""
    listen = str(_key(handler, "listen") or "")
    port = str(_key(handler, "port") or "")
    wanted = ({listen} if _unix_socket(listen)
              else {port, f"{listen}:{port}", f"[{listen}]:{port}"})
    for front in inbounds:
        settings = _key(front, "settings") or {}
        fallbacks = _key(settings, "fallbacks") if isinstance(settings, Mapping) else None
        for fallback in fallbacks if isinstance(fallbacks, list) else []:
            if isinstance(fallback, Mapping) and str(_key(fallback, "dest")) in wanted:
                return front
    return None


def _located(file: str, path: str, make: Any) -> List[ShareLink]:
    try:
        return list(make())
    except ConfigError as e:
        raise e.located(file=file, prefix=path) from None


def _handlers(data: Mapping[str, Any], kind: str) -> List[Any]:
    found = []
    single = _key(data, kind)
    if isinstance(single, Mapping):
        found.append((kind, single))
    for key in (kind + "Detour", kind + "s"):
        items = _key(data, key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ConfigError("is not a list", key)
        found += [(f"{key}[{i}]", item) for i, item in enumerate(items)
                  if isinstance(item, Mapping)]
    return found


def _outbound_links(handler: Mapping[str, Any], path: str) -> List[ShareLink]:
    protocol = _protocol(handler)
    if protocol is None:
        return []
    settings = _key(handler, "settings") or {}
    stream = _stream_fields(_key(handler, "streamSettings") or {})
    name = str(_key(handler, "tag") or "")
    key = "vnext" if protocol in (VMESS, VLESS) else "servers"
    links = []
    for i, server in enumerate(_list(settings, key, "settings")):
        where = f"settings.{key}[{i}]"
        address, port = _key(server, "address"), _key(server, "port")
        for user, user_path in _users(protocol, server, where):
            links.append(_link(protocol, user, user_path, address, port, name, stream))
    return links


def _inbound_links(handler: Mapping[str, Any], host: str,
                   front: Optional[Mapping[str, Any]] = None) -> List[ShareLink]:
    """``front``: the inbound whose fallback leads here; clients dial its port, through its
    TLS, and this inbound's transport runs inside."""
    protocol = _protocol(handler)
    assert protocol is not None
    settings = _key(handler, "settings") or {}
    stream = _stream_fields(_key(handler, "streamSettings") or {}, server_side=True)
    port = _first_port(_key(handler, "port"))
    if front is not None:
        outer = _stream_fields(_key(front, "streamSettings") or {}, server_side=True)
        # the front's ALPN stays out: a WebSocket client must offer http/1.1 alone
        stream = {**stream, "security": outer["security"]}
        port = _first_port(_key(front, "port"))
    name = str(_key(handler, "tag") or "")
    if protocol == SHADOWSOCKS:  # 4.34's Shadowsocks inbound has one user, in settings
        users = [(settings, "settings")]
    else:
        users = [(u, f"settings.clients[{i}]")
                 for i, u in enumerate(_list(settings, "clients", "settings"))]
    return [_link(protocol, user, where, host, port, str(_key(user, "email") or name), stream)
            for user, where in users]


def _link(protocol: str, user: Mapping[str, Any], where: str, address: Any, port: Any,
          name: str, stream: Mapping[str, Any]) -> ShareLink:
    if _key(user, "flow"):
        raise ConfigError(f"flow {str(_key(user, 'flow'))[:50]!r} (XTLS) has no link v2sync "
                          "can write", join_path(where, "flow"))
    secret_key = "id" if protocol in (VMESS, VLESS) else "password"
    method = {VMESS: _key(user, "security") or "auto", VLESS: "none",
              SHADOWSOCKS: _ss_method(_key(user, "method")), TROJAN: ""}[protocol]
    try:
        return check(ShareLink(
            protocol=protocol, address=str(address or ""), port=_int(port),
            secret=str(_key(user, secret_key) or ""), name=name, method=str(method),
            alter_id=_int(_key(user, "alterId") or 0), **stream))
    except ConfigError as e:
        raise e.located(prefix=where) from None


def _ss_method(value: Any) -> str:
    name = str(value or "").lower()  # 4.34 matches cipher names case-insensitively
    return SS_METHODS.get(name, name)


def _users(protocol: str, server: Mapping[str, Any], where: str) -> List[Any]:
    if protocol in (VMESS, VLESS):
        return [(u, f"{where}.users[{i}]") for i, u in enumerate(_list(server, "users", where))]
    return [(server, where)]


def _stream_fields(raw: Mapping[str, Any], server_side: bool = False) -> Dict[str, Any]:
    network = str(_key(raw, "network") or "tcp").lower()
    network = {"websocket": "ws"}.get(network, network)
    fields: Dict[str, Any] = {"network": network,
                              "security": str(_key(raw, "security") or "none").lower()}
    if network == "ws":
        ws = _key(raw, "wsSettings") or {}
        fields["path"] = str(_key(ws, "path") or "/")
        fields["host"] = str(_key(_key(ws, "headers") or {}, "Host") or "")
    header = _key(_key(raw, "tcpSettings") or {}, "header") or {}
    if network == "tcp" and _key(header, "type") == "http":
        request = _key(header, "request") or {}
        fields["header_type"] = "http"
        fields["path"] = str((_key(request, "path") or ["/"])[0])
        hosts = _key(_key(request, "headers") or {}, "Host") or []
        fields["host"] = ",".join(hosts if isinstance(hosts, list) else [str(hosts)])
    tls = _key(raw, "tlsSettings") or {}
    if fields["security"] == "tls" and not server_side:
        fields["sni"] = str(_key(tls, "serverName") or "")
    if fields["security"] == "tls" and _key(tls, "alpn"):
        fields["alpn"] = tuple(str(a) for a in _key(tls, "alpn"))
    return fields


def _protocol(handler: Mapping[str, Any]) -> Optional[str]:
    protocol = str(_key(handler, "protocol") or "").lower()
    protocol = {"ss": SHADOWSOCKS}.get(protocol, protocol)
    return protocol if protocol in PROTOCOLS else None


def _first_port(value: Any) -> int:
    if isinstance(value, str) and "-" in value:
        value = value.split("-")[0]  # a port range: clients may dial any; the first will do
    return _int(value, "port")


def _int(value: Any, part: str = "port") -> int:
    if isinstance(value, bool):
        raise ConfigError("is not a number", part)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{str(value)[:50]!r} is not a number", part) from None


def _list(obj: Any, key: str, where: str) -> Sequence[Any]:
    value = _key(obj, key)
    if not isinstance(value, list) or not value:
        raise ConfigError("is missing or empty", join_path(where, key), expected="a list")
    return value


def _key(obj: Any, key: str) -> Any:
    """``obj[key]`` matched case-insensitively, as Go's encoding/json matches keys."""
    if not isinstance(obj, Mapping):
        return None
    if key in obj:
        return obj[key]
    lower = key.lower()
    for name, value in obj.items():
        if isinstance(name, str) and name.lower() == lower:
            return value
    return None
