//! Fuzz target: arbitrary bytes as they could arrive on any MQTT topic the agent or
//! hub reads (manifest, key set, status, event). Nothing may panic; sizes over the
//! limit must be refused before decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_protocol::envelope::{decode_body, open, Kind};
use outpost_protocol::keyset::SignedKeySet;
use outpost_protocol::{Event, KeySet, Manifest, PublicKey, StatusReport, TrustState, Verifier};
use std::sync::OnceLock;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        // A fixed public key: the fuzzer cannot forge signatures, but it reaches
        // every check up to the signature and, through the raw decoders below,
        // everything after it.
        let key = PublicKey([7; 32]);
        let keyset = KeySet { version: 1, issued_at: 0, keys: vec![key] };
        Verifier::new("fuzz-device".parse().expect("valid id"), TrustState { root: key, keyset, last: None })
    })
}

fuzz_target!(|data: &[u8]| {
    let v = verifier();
    let _ = v.verify(data);
    let _ = v.verify_keyset(data);
    let _ = SignedKeySet::verify(data, &PublicKey([7; 32]), None);
    let device = v.device_id();
    let _ = StatusReport::open(data, device, &PublicKey([7; 32]));
    let _ = Event::open(data, device, &PublicKey([7; 32]));
    for kind in [Kind::Manifest, Kind::KeySet, Kind::Status, Kind::Event] {
        if let Ok(o) = open(kind, data) {
            let _ = decode_body::<Manifest>("manifest", o.body);
            let _ = decode_body::<StatusReport>("status", o.body);
            let _ = decode_body::<Event>("event", o.body);
        }
    }
    let _ = postcard::from_bytes::<Manifest>(data);
});
