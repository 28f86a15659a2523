"""Starting a local Ray beside another one on the same machine."""

from __future__ import annotations

import socket

from lavic_ray.runtime import dashboard_port


def test_the_dashboard_moves_off_a_taken_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        port = dashboard_port(preferred=taken)
        assert port != taken and port > 0
        with socket.socket() as s:  # and the port it gives is one that can be bound
            s.bind(("127.0.0.1", port))


def test_the_preferred_port_when_it_is_free():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert dashboard_port(preferred=free) == free
