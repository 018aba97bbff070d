"""Talking to HAProxy's runtime API: ``protocol`` (pure), ``client`` (I/O), ``deploy``."""
