"""An alert's life at the centre: the lifecycle and correlation cores, the operations that apply
them inside ingest and for operators, and the store operators read."""
