"""The I/O core, below every protocol: ``stream`` (the byte-stream interface and the socket
stream), ``relay`` (moves bytes between two streams), ``acceptor`` (accepts on a listening
socket), ``listen`` (binds one; gevent-free, the master uses it), ``dial`` (connects out),
``tasks`` (reusable greenlets per connection), ``session`` (what the dispatcher routes, and
the callbacks that run when a connection ends)."""
