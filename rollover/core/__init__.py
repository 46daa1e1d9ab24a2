"""Pure code, run by whichever process imports it: no I/O, no clock, no global state.

What lives here is decided from facts handed in and is unit-tested like a parser:
`rollout` (the roll as a state machine: events and a clock value in, `actions` out),
`canary` (the canary's verdict from request counts), `outcomes` (request counts by how
they ended), `messages` (what a worker tells its master: the typed messages, their one
encoding and a decoder that never raises).
"""
