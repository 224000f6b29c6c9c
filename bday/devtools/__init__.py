"""Development tools, not part of the service: the fake email service, throw-away sandboxes
(database + vhost + processes), the live demo and the benchmark. The demo's table needs the
`demo` extra (rich)."""
