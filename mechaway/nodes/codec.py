"""The payload codecs, for node modules: they live in ``mechaway.codec`` (the store and
drivers use them too, and those must not import ``mechaway.nodes``)."""

from mechaway.codec import (
    DECODERS,
    ENCODERS,
    LENIENT_ENCODERS,
    Codec,
    describe,
    json_default,
)

__all__ = ["DECODERS", "ENCODERS", "LENIENT_ENCODERS", "Codec", "describe", "json_default"]
