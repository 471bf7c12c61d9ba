//! Fleet simulator: many simulated devices (real MQTT clients, real keys, real
//! manifest verification and signed status, simulated container runtime).
