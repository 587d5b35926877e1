"""dokodemo-door (v2ray ``proxy/dokodemo``): an inbound that speaks no protocol.

Every connection (TCP) or every source's datagrams (UDP) go to one fixed destination
(``address``:``port``), or, with ``followRedirect``, to the destination the client originally
addressed before iptables REDIRECT/TPROXY sent it here (``transport/internet/tproxy.py``).
It also carries the API inbound (a fixed destination that routing sends to the API).
"""
