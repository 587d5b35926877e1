"""Feature implementations (v2ray ``app/``): dispatcher, inbound/outbound managers, policy, log."""
