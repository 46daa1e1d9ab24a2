"""Pure code, run by whichever process imports it: no I/O, no clock, no global state.

What lives here is decided from facts handed in and is unit-tested like a parser: the
typed messages a worker sends its master (`messages`: their one encoding and a decoder
that never raises).
"""
