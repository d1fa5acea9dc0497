"""The project's own errors: every failure a user can cause names what is wrong."""


class KvwireError(Exception):
    """Base class of every error kvwire raises on purpose."""


class ConfigError(KvwireError):
    """A configuration key is unknown, missing or of the wrong type."""


class ModelSourceError(KvwireError):
    """A model could not be resolved, downloaded, verified or loaded faithfully."""


class PromptSourceError(KvwireError):
    """A prompt source could not be read or yields too little text."""


class KVError(KvwireError):
    """A KV cache (file or tensors) is malformed: bad shape, dtype, NaN/Inf, missing layer."""


class CodecError(KvwireError):
    """A codec was asked for something it cannot do (unknown name, bad parameter, bad input)."""


class WireError(KvwireError):
    """Wire bytes are truncated, corrupted or of an unknown format/version."""


class GateError(KvwireError):
    """A sanity gate failed: the study's numbers must not be published until it is understood."""


class OffloadError(KvwireError):
    """A paged-offload experiment was set up wrongly (pool smaller than the attention budget, bad trace)."""
