"""``python -m otel_pg_exporter``: the same as the ``otel-pg`` command."""

from otel_pg_exporter.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
