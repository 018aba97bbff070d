"""Where certificates come from: files, directories, crt-lists and haproxy.cfg."""
