"""The condition-name grammar: how the command line names RTN widths and deployed schemes.

``int6`` -> ``rtn-int6``; ``int4-g128`` -> ``rtn-int4-g128`` (group-wise RTN); ``nf4`` ->
``nf4-b64``; ``nf4-dq`` -> ``nf4-dq-b64`` (double quantization); ``fp8`` -> ``fp8-e4m3``; other names pass through.
"""

from __future__ import annotations

import re

# Deployed schemes the gate can audit beside RTN, by condition name (see compress/schemes.py).
SCHEME_NAME = re.compile(
    r"^(?:nf4(?P<dq>-dq)?-b(?P<block>\d+)|fp8-(?P<fp8>e4m3|e5m2)|(?P<absmax>absmax-int8)"
    r"|rtn-int(?P<bits>\d+)-g(?P<group>\d+)|rtn-int(?P<refbits>\d+)-refcode)$"
)

#: The RTN widths an audit takes, everywhere (conditions, names, options, markers, gates).
BIT_WIDTHS = "2..8"


def valid_bits(bits) -> bool:
    """Whether ``bits`` is an RTN width of :data:`BIT_WIDTHS` (an int, not a bool)."""
    return isinstance(bits, int) and not isinstance(bits, bool) and 2 <= bits <= 8


SCHEME_EXAMPLES = "nf4, nf4-dq, nf4-b128, fp8-e4m3, fp8-e5m2, absmax-int8, int4-g128, int6-refcode"


def scheme_name(text: str) -> str:
    """The condition name of a scheme as written on the command line (``nf4`` ->
    ``nf4-b64``, ``int4-g128`` -> ``rtn-int4-g128``); ValueError if it is none."""
    name = condition_name(text.strip().lower())
    match = SCHEME_NAME.match(name)
    bits = match and (match["bits"] or match["refbits"])
    bad_bits = bits and not valid_bits(int(bits))
    if not match or bad_bits or any(v == "0" for v in match.groupdict().values() if v):
        raise ValueError(f"--qdm-schemes {text!r} is not a scheme; use {SCHEME_EXAMPLES}")
    return name


def condition_name(token: str) -> str:
    """``int6`` -> ``rtn-int6``, ``nf4`` -> ``nf4-b64``, ``fp8`` -> ``fp8-e4m3``; other names
    pass through."""
    if re.fullmatch(r"int\d+(-g\d+|-refcode)?", token):
        return f"rtn-{token}"
    return {"nf4": "nf4-b64", "nf4-dq": "nf4-dq-b64", "fp8": "fp8-e4m3"}.get(token, token)
