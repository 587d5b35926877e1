"""The router (v2ray ``app/router``): which outbound takes a connection.

Modules, in the order data flows through them:

- ``geodata``  reads ``geoip.dat`` / ``geosite.dat`` (protobuf ``GeoIPList`` / ``GeoSiteList``)
               lazily, only the lists a config names, from the asset directory
               (``V2RAY_LOCATION_ASSET`` / ``V2SYNC_LOCATION_ASSET``); ``geoip:private`` is built
               in. It also writes such files, for tests.
- ``config``   turns the JSON ``routing`` section into a frozen ``RoutingConfig``: every
               ``geosite:``/``geoip:``/``ext:`` entry is expanded there, so a missing file or
               list is a config error, found at load time like ``v2ray -test`` finds it.
- ``matchers`` the data structures: a domain table (hash lookups per label suffix for
               ``full:``/``domain:``, one Aho-Corasick automaton for all keywords, compiled
               regexes) and IP sets (merged integer ranges, ``bisect``).
- ``router``   ``Router.decide(session)`` -> ``RouteDecision(tag, resolved, rule)``: 4.34's
               first-match semantics and domain strategies, without trying rules one by one
               for their domain and IP conditions.

The dispatcher calls ``Router.pick_route`` (the ``features.routing.Router`` interface) or
``Router.decide`` when it needs the addresses the router resolved, so the dial uses the same
answer the decision was made on.
"""
from v2sync.app.router.config import (
    BalancerConfig, DomainStrategy, RoutingConfig, RoutingRule, from_json,
)
from v2sync.app.router.router import RouteDecision, Router, RoutingContext

__all__ = ["BalancerConfig", "DomainStrategy", "RouteDecision", "Router", "RoutingConfig",
           "RoutingContext", "RoutingRule", "from_json"]
