"""The long-running service: scheduler, state database, metrics, event log, process wrapper."""
