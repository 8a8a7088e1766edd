"""What the bridge hands the registry: one ingest step as plain data (``changes``), and the gap
audit across a shared subscription (``seqaudit``)."""
