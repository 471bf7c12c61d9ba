//! Shared fixtures for Outpost's end-to-end tests (processes, ports, temp dirs).
