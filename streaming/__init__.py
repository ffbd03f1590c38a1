"""Kafka contract, producer with disk spool, embedded broker (and later: the processor)."""
