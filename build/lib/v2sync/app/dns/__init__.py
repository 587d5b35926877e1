"""The built-in DNS (v2ray ``app/dns``): what freedom's UseIP strategies and the router's
IPIfNonMatch/IPOnDemand ask when they need an IP for a name.

Modules, from pure to socket-touching:

- ``wire``: the DNS message codec (queries with the EDNS0 client-subnet option, responses
  with name compression). Pure; follows the ``common.cursor`` contract.
- ``matcher``: domain rules (``full:``, ``domain:``, ``keyword:``, ``regexp:``, ``dotless:``)
  and a matcher group that returns matches in v2ray's order.
- ``config``: the ``dns`` JSON section -> frozen ``DnsConfig``.
- ``client``: name servers. ``UdpNameServer`` (one socket per exchange, one absolute 4 s
  deadline, one resend) and ``LocalNameServer`` (the system's ``getaddrinfo``).
- ``server``: ``DnsResolver.lookup(domain, strategy)``: hosts, then servers in priority
  order with ``expectIps`` and a per-server TTL cache, as 4.34's ``dns.go`` orders them.

Nothing here starts a thread or keeps a socket open between lookups, so a resolver needs no
``close()``; a lookup blocks its caller's thread for at most (servers x 4 s).
"""
