"""Who may do what: client keys (inference, /v1/models) and admin keys (/admin/*).

keys.py    the key ring: the credential a request carries, checked in constant time against every key
admin.py   the admin endpoints' policy: admin key only, no cross-site requests, loopback-only when open
exposure.py what the gateway says at start about how exposed it is (no keys beyond loopback: loudly)
"""

from gateway.auth.keys import Forbidden, KeyRing, Role

__all__ = ["Forbidden", "KeyRing", "Role"]
