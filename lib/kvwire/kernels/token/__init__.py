"""Per-token int8 / int4 / FP8 E4M3 at their defaults: one fused launch per cache, equal-length layer payloads."""
