//! TLS configuration for both ends of a node-to-manager connection.
