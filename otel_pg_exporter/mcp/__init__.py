"""``otel-pg mcp``: a local MCP server over the query layer, for the agent in a developer's editor.

The modules without the SDK (``output``, ``trim``, ``reader``, ``sandbox``, ``tools``) hold
everything the tools do and can be used and tested on their own; only ``server`` imports the
``mcp`` SDK (the optional extra ``otel_pg_exporter[mcp]``). Span data is written by whoever sends
requests to the traced services, so every tool frames it as untrusted data, and the one tool that
runs SQL of the model's choosing (``query``) runs it only as a least-privilege reader role, in a
read-only transaction, one statement, with a timeout and caps on what comes back.
"""
