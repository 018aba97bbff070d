"""Where staples go once stored: the HAProxy runtime-API sink."""
