"""
Test helpers for hastaple and for setups that use it, public as trustme is.

- ``pki``: a throw-away PKI (root, intermediate, delegated OCSP signer, leaves)
  that also signs OCSP responses, right or wrong in one chosen way;
- ``responders``: real OCSP responders on 127.0.0.1 (``openssl ocsp`` behind a
  small HTTP front, and a fault-injecting one whose ``behaviours`` each test
  sets: faults, or a CA signing at the time a clock says);
- ``clock``: a clock a test moves by hand (the daemon takes it as its clock);
- ``haproxy``: a real HAProxy on 127.0.0.1 and a free port, and
  ``openssl s_client -status`` to see what it staples.

The hastaple tests, ``hastaple demo`` and bench/ use these and no other copy.
Of the package, only ``hastaple demo`` (app/) imports it.
"""
