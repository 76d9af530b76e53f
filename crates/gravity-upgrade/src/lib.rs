//! Cluster upgrade: plan builder, phases and backends (not yet implemented).
