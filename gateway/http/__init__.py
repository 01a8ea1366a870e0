"""The transport: HTTP/1.1 bytes on the wire, both directions (clients in, upstreams out)."""
