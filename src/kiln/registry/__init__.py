"""kiln's registry access, one module per concern (nothing imported here, so importing the pure
modules never loads the HTTP client): :mod:`.reference` (names), :mod:`.media` (media types and
the manifest model), :mod:`.auth` (pure credential and challenge parsing), :mod:`.access` (which
registry, TLS, credentials, auth files for tools) and :mod:`.client` (HTTP)."""
