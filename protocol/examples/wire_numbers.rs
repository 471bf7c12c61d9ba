//! Prints the numbers the README quotes for the wire format: encoded size of a
//! representative 5-app manifest in postcard vs serde_json, and the cost of
//! sealing (sign) and verifying one manifest.
//!
//! Run: `cargo run --release -p outpost-protocol --example wire_numbers`

use outpost_protocol::envelope::{seal, Kind};
use outpost_protocol::sample::gateway_manifest;
use outpost_protocol::{KeySet, SigningKey, TrustState, Verdict, Verifier};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = SigningKey::generate()?;
    let device = "gw-site-a-0042".parse()?;
    let manifest = gateway_manifest(device, key.key_id(), 7);

    let postcard_body = postcard::to_stdvec(&manifest)?;
    let json_body = serde_json::to_vec(&manifest)?;
    let sealed = seal(Kind::Manifest, &key, &postcard_body);
    println!("manifest with {} apps", manifest.apps.len());
    println!("  postcard body:        {:>6} bytes", postcard_body.len());
    println!(
        "  postcard sealed:      {:>6} bytes (envelope + key id + signature)",
        sealed.len()
    );
    println!("  serde_json body:      {:>6} bytes", json_body.len());
    println!(
        "  postcard / json:      {:>6.1} % (sealed {:.1} %)",
        100.0 * postcard_body.len() as f64 / json_body.len() as f64,
        100.0 * sealed.len() as f64 / json_body.len() as f64
    );

    let keyset = KeySet {
        version: 1,
        issued_at: 0,
        keys: vec![key.public_key()],
        expires_at: outpost_protocol::NEVER,
        root_version: 1,
    };
    let verifier = Verifier::new(
        manifest.device_id.clone(),
        TrustState {
            root: key.public_key(),
            keyset,
            last: None,
            time_floor: 0,
            root_version: 1,
        },
    );
    const N: usize = 2000;
    let mut encode_sign = Vec::with_capacity(N);
    let mut verify = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let body = postcard::to_stdvec(&manifest)?;
        let bytes = std::hint::black_box(seal(Kind::Manifest, &key, &body));
        encode_sign.push(t.elapsed());
        let t = Instant::now();
        let verdict = verifier.verify(&bytes, manifest.issued_at)?;
        verify.push(t.elapsed());
        assert!(matches!(verdict, Verdict::Accept(_)));
    }
    println!("per manifest (median of {N}):");
    println!(
        "  encode + sign:        {:>6.1} µs",
        median(encode_sign).as_secs_f64() * 1e6
    );
    println!(
        "  verify + decode:      {:>6.1} µs",
        median(verify).as_secs_f64() * 1e6
    );
    Ok(())
}
