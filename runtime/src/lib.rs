//! Container runtime for Outpost apps: OCI runtime spec generation from an `AppSpec`
//! and lifecycle (create, start, stop, delete, adopt) through youki's libcontainer.
