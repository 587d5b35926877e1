"""JSON config: V2Ray 4.34's format in, frozen dataclasses out (v2ray ``infra/conf``).

The pipeline runs in four stages, each in its own module, and reports every problem it finds
at once, each located as ``file: json.path: what is wrong (what was expected)``:

1. ``loader``   reads each file (or stdin), strips ``//``, ``/* */`` and ``#`` comments the way
                ``infra/conf/json/reader.go`` does, and parses it.
2. ``validate`` checks each file on its own against ``schema.json``. Before that, ``schema``
                walks the document: keys are matched case-insensitively as Go's
                ``encoding/json`` does, comma-separated string lists become arrays, unknown keys
                become warnings (V2Ray ignores them) and V2Ray features v2sync lacks become
                errors naming what is supported.
3. ``loader.merge`` applies ``Config.Override`` (``infra/conf/v2ray.go``) across the files,
                remembering which file and JSON path every inbound, outbound and section came
                from, so later errors still point at the right place.
4. ``builder``  makes the frozen ``model`` objects, converting per-protocol ``settings``
                with each protocol's ``config.py``, and runs the cross-item checks (ports,
                duplicate tags, addresses).

The runtime only ever sees ``model.Config``; it never reads a raw dict except a handler's
``settings``, which that protocol's own ``config.py`` converts.
"""
