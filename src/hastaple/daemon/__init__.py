"""
The long-running service, in parts that can each be tested alone.

``scheduler`` (the Daemon: what runs when), ``discovery`` (the diff a
configuration makes), ``scheduling`` (what an outcome means for a record),
``batching`` (one state transaction per batch), ``restarts`` (HAProxy process
tracking), ``watcher`` (file events), ``loop`` (the asyncio wiring), ``state``
(SQLite), ``metrics``, ``eventlog`` (the log lines) and ``service`` (the
process: signals, reload, the metrics server).
"""
