"""v2sync: a V2Ray-compatible proxy platform written in Python.

The package mirrors v2ray-core's layout so that a reader who knows one knows the other:

- ``infra/conf``   JSON loading, merging, schema validation, builders to frozen dataclasses
- ``core``         the Instance: builds features from config, starts and closes them
- ``app``          feature implementations (dispatcher, inbound/outbound managers, policy, log)
- ``proxy``        one package per protocol; ``encoding.py`` in each is a pure codec
- ``transport``    pipes and links between handlers; ``transport/internet`` owns every socket
- ``common``       errors, registries, addresses, small shared helpers

Concurrency model: blocking thread per connection, bounded everywhere (see ``transport.pipe``).
"""

__version__ = "0.1.0"
