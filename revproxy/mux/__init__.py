"""Mux.Cool, V2Ray's stream multiplexer: many sessions inside one tunnel stream.

``frame`` is the sans-IO codec (bytes in, frames out, and back); ``connection`` runs one
multiplexed stream (its reader, its session table, its bounded write queue, per-session flow
control) and defines ``MuxSession``, a stream of its own; ``splice`` relays a socket to a
session in hub callbacks (what ``net.relay`` uses for a socket and a session); ``client`` opens
sessions (the portal's role in a tunnel), ``server`` accepts them (the bridge's role).
"""
