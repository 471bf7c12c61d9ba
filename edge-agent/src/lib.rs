//! Library behind the binary; modules are added per concern.
