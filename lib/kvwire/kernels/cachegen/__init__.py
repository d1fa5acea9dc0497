"""CacheGen (``codecs/cachegen.py``): anchor and delta streams by depth tier, entropy-coded on the host or bit-packed."""
