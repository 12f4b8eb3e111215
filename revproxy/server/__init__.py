"""The process model: a master forks gevent workers that share listening sockets and a
shared-memory state table.

``supervisor`` is the master (signals, spawning, reaping, reloads; never imports gevent);
``spec`` is what it hands a worker; ``worker`` is the life of one forked worker process
(signals, heartbeat, process title); ``statetable`` is the shared table (worker rows, tunnel
rows, replay filter); ``cluster`` is a worker's view of its siblings through it;
``handoff`` passes a visitor's socket to the sibling that owns the chosen tunnel; ``status``
reads the table for ``revproxy status``; ``users`` drops privileges. Gevent-free modules say
so in their docstring.
"""
