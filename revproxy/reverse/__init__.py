"""V2Ray's reverse proxy: the bridge dials tunnels out, the portal serves visitors through them.

``portal`` is an outbound (a session to the portal's domain *is* a tunnel; any other is a
visitor carried as a mux session); ``bridge`` keeps a pool of tunnels to each portal server
its outbound lists and dispatches the sessions the portals open in them; ``control`` is the
sans-IO codec of the control channel; ``balance`` picks a tunnel for a visitor, bridge host
first; ``tunnel`` holds what both ends count per tunnel and watches the peer through the
tunnel's socket (a host that vanishes sends no reset); ``directory`` is what both ask of the
sibling workers (``server.cluster`` answers).
"""
