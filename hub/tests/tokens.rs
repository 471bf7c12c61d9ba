//! API tokens through the real `outpost-hub` binary over TLS: every request
//! kind against every role and scope (admin; operator scoped `site=a`; viewer
//! scoped `site=a`; viewer unscoped; a revoked token; no token), what scoped
//! tokens see in list answers, refusals in the audit log, and the CLI's TLS
//! defaults (https from hub.toml with the certificate pinned, a wrong pin,
//! `--ca-file`, TLS turned off).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use outpost_hub::client::{ApiClient, Trust};
use outpost_hub::config::DataDir;
use outpost_protocol::SigningKey;
use outpost_test_support::hub::HubServe;
use outpost_test_support::PortLease;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// A raw request with `token` (none: no Authorization header at all), over
/// TLS with the hub's certificate pinned.
struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    fn new(hub: &HubProc) -> Raw {
        let (config, _) =
            outpost_hub::tls::pinned_client(&DataDir::new(&hub.dir).api_cert()).unwrap();
        Raw {
            http: reqwest::Client::builder()
                .tls_backend_preconfigured(config)
                .build()
                .unwrap(),
            base: hub.addrs.url(),
        }
    }

    async fn send(
        &self,
        token: Option<&str>,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        assert!(self.base.starts_with("https://"));
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn cli_json(hub: &HubProc, args: &[&str]) -> Value {
    serde_json::from_str(&hub.cli(args)).unwrap()
}

fn deployment(name: &str, selector: Value, app: &str, rollout: bool) -> Value {
    let mut d = json!({
        "name": name,
        "selector": selector,
        "apps": [{ "name": app, "image": pinned("reg/app", 7) }],
    });
    if rollout {
        d["rollout"] = json!({ "canary": 1, "waves": ["100%"] });
    }
    d
}

/// Ids in a list answer, by `key` (`id`, or `spec.name` for deployments,
/// `deployment` for rollouts).
fn ids(v: &Value, key: &[&str]) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut x = e;
            for k in key {
                x = &x[*k];
            }
            x.as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_and_scope_is_allowed_exactly_what_it_should() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let hub = HubProc::start(&dir, None).await;
    let admin_secret = std::fs::read_to_string(DataDir::new(&dir).token())
        .unwrap()
        .trim()
        .to_string();

    // The fleet: two devices at site a, one at site b; a deployment and a
    // rollout on each side.
    let key = || SigningKey::generate().unwrap().public_key().to_string();
    for (id, labels) in [
        ("a-1", json!({ "site": "a" })),
        ("a-2", json!({ "site": "a", "role": "gw" })),
        ("b-1", json!({ "site": "b" })),
    ] {
        let _: Value = hub
            .api
            .call(
                Method::POST,
                "/v1/devices",
                Some(&json!({ "id": id, "public_key": key(), "labels": labels })),
            )
            .await
            .unwrap();
    }
    for (name, site, app, rollout) in [
        ("dep-a", "a", "web", false),
        ("dep-b", "b", "web", false),
        ("ro-a", "a", "cam", true),
        ("ro-b", "b", "cam", true),
    ] {
        let d = deployment(name, json!({ "site": site }), app, rollout);
        let _: Value = hub
            .api
            .call(Method::PUT, "/v1/deployments", Some(&d))
            .await
            .unwrap();
    }

    // The tokens, made with the CLI (over TLS, with the init-made admin token).
    let secret = |name: &str, role: &str, scope: &[&str]| -> String {
        let mut args = vec!["token", "create", name, "--role", role, "--json"];
        for s in scope {
            args.extend(["--scope", s]);
        }
        let v = cli_json(&hub, &args);
        assert_eq!(v["name"], name);
        assert_eq!(v["role"], role);
        v["secret"].as_str().unwrap().to_string()
    };
    let op_a = secret("op-a", "operator", &["site=a"]);
    let viewer_a = secret("viewer-a", "viewer", &["site=a"]);
    let viewer = secret("viewer", "viewer", &[]);
    let gone = secret("gone", "operator", &[]);
    let raw = Raw::new(&hub);
    // The revoked token worked until it was revoked, and fails at once after.
    assert_eq!(
        raw.send(Some(&gone), &Method::GET, "/v1/devices", None)
            .await
            .0,
        StatusCode::OK
    );
    let out = hub.cli(&["token", "revoke", "gone"]);
    assert!(out.contains("revoked"), "{out}");

    struct Caller<'a> {
        name: &'a str,
        token: Option<&'a str>,
        scoped: bool,
    }
    let callers = [
        Caller {
            name: "admin",
            token: Some(&admin_secret),
            scoped: false,
        },
        Caller {
            name: "op-a",
            token: Some(&op_a),
            scoped: true,
        },
        Caller {
            name: "viewer-a",
            token: Some(&viewer_a),
            scoped: true,
        },
        Caller {
            name: "viewer",
            token: Some(&viewer),
            scoped: false,
        },
        Caller {
            name: "gone",
            token: Some(&gone),
            scoped: false,
        },
        Caller {
            name: "none",
            token: None,
            scoped: false,
        },
    ];

    // One row per request kind; one letter per caller, in the order above:
    // `Y` allowed (any answer but 401/403/5xx), `.` refused (403), `u` 401,
    // `-` not sent (it would change what the other rows see). `{c}` in a
    // path or body is the caller's name, so each caller touches its own.
    let post = Method::POST;
    let get = Method::GET;
    let del = Method::DELETE;
    let put = Method::PUT;
    let patch = Method::PATCH;
    #[rustfmt::skip]
    let rows: Vec<(&str, Method, &str, Option<Value>)> = vec![
        ("YYYYYY", get.clone(), "/v1/health", None),
        ("YYYYuu", get.clone(), "/v1/devices", None),
        ("YYYYuu", get.clone(), "/v1/devices/a-2", None),
        ("Y..Yuu", get.clone(), "/v1/devices/b-1", None),
        ("Y..Yuu", get.clone(), "/v1/devices/b-1/events", None),
        ("YYYYuu", get.clone(), "/v1/devices/a-1/events", None),
        ("Y...uu", post.clone(), "/v1/devices", Some(json!({ "id": "new-{c}", "public_key": "{key}", "labels": { "site": "a" } }))),
        ("Y...uu", post.clone(), "/v1/devices/batch", Some(json!({ "devices": [{ "id": "batch-{c}", "public_key": "{key}", "labels": { "site": "a" } }] }))),
        ("Y...uu", del.clone(), "/v1/devices/new-{c}", None),
        ("Y...uu", post.clone(), "/v1/devices/a-1/broker-cert", None),
        ("YY..uu", patch.clone(), "/v1/devices/a-1/labels", Some(json!({ "set": { "by": "{c}" } }))),
        ("-...uu", patch.clone(), "/v1/devices/a-2/labels", Some(json!({ "set": { "site": "b" } }))),
        ("-...uu", patch.clone(), "/v1/devices/b-1/labels", Some(json!({ "set": { "site": "a" } }))),
        ("-...uu", patch.clone(), "/v1/devices/a-2/labels", Some(json!({ "remove": ["site"] }))),
        ("YYYYuu", get.clone(), "/v1/deployments", None),
        ("YYYYuu", get.clone(), "/v1/deployments/dep-a", None),
        ("Y..Yuu", get.clone(), "/v1/deployments/dep-b", None),
        ("YY..uu", put.clone(), "/v1/deployments", Some(deployment("mine-{c}", json!({ "site": "a", "role": "gw" }), "{c}", false))),
        ("Y...uu", put.clone(), "/v1/deployments", Some(deployment("wide-{c}", json!({ "role": "gw" }), "w{c}", false))),
        ("-...uu", put.clone(), "/v1/deployments", Some(deployment("dep-b", json!({ "site": "a" }), "web", false))),
        ("YY..uu", del.clone(), "/v1/deployments/mine-{c}", None),
        ("-...uu", del.clone(), "/v1/deployments/dep-b", None),
        ("YYYYuu", get.clone(), "/v1/rollouts", None),
        ("YYYYuu", get.clone(), "/v1/rollouts/ro-a", None),
        ("Y..Yuu", get.clone(), "/v1/rollouts/ro-b", None),
        ("YY..uu", post.clone(), "/v1/rollouts/ro-a/pause", None),
        ("Y...uu", post.clone(), "/v1/rollouts/ro-b/pause", None),
        ("YY..uu", patch.clone(), "/v1/config", Some(json!({ "scope": { "device": "a-1" }, "set": { "BY_{c}": "x" } }))),
        ("YY..uu", patch.clone(), "/v1/config", Some(json!({ "scope": { "selector": { "site": "a" } }, "set": { "S_{c}": "1" } }))),
        ("YY..uu", patch.clone(), "/v1/config", Some(json!({ "scope": { "deployment": "dep-a" }, "set": { "D_{c}": "1" } }))),
        ("Y...uu", patch.clone(), "/v1/config", Some(json!({ "set": { "FLEET_{c}": "1" } }))),
        ("Y...uu", patch.clone(), "/v1/config", Some(json!({ "scope": { "app": "web" }, "set": { "FA_{c}": "1" } }))),
        ("Y...uu", patch.clone(), "/v1/config", Some(json!({ "scope": { "device": "b-1" }, "set": { "B_{c}": "1" } }))),
        ("Y...uu", patch.clone(), "/v1/config", Some(json!({ "scope": { "deployment": "dep-b" }, "set": { "D_{c}": "1" } }))),
        ("Y...uu", patch.clone(), "/v1/config", Some(json!({ "scope": { "selector": { "role": "gw" } }, "set": { "G_{c}": "1" } }))),
        ("YYYYuu", get.clone(), "/v1/config", None),
        ("YYYYuu", get.clone(), "/v1/devices/a-2/config", None),
        ("Y..Yuu", get.clone(), "/v1/devices/b-1/config", None),
        ("YYYYuu", get.clone(), "/v1/stats", None),
        ("Y...uu", get.clone(), "/v1/audit", None),
        ("Y...uu", get.clone(), "/v1/tokens", None),
        ("Y...uu", post.clone(), "/v1/tokens", Some(json!({ "name": "made-by-{c}", "role": "viewer" }))),
        ("Y...uu", del.clone(), "/v1/tokens/made-by-{c}", None),
    ];
    let mut refusals = 0;
    let mut seen_403 = None;
    for (want, method, path, body) in &rows {
        for (c, w) in callers.iter().zip(want.chars()) {
            if w == '-' {
                continue;
            }
            let path = path.replace("{c}", c.name);
            let body = body.as_ref().map(|b| {
                serde_json::from_str::<Value>(
                    &b.to_string()
                        .replace("{c}", c.name)
                        .replace("{key}", &key()),
                )
                .unwrap()
            });
            let (status, answer) = raw.send(c.token, method, &path, body.as_ref()).await;
            let what = format!("{method} {path} by {}: {status} {answer}", c.name);
            match w {
                'Y' => assert!(
                    ![401, 403].contains(&status.as_u16()) && !status.is_server_error(),
                    "{what}"
                ),
                '.' => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                    // The refusal names the token, its role and scope, and what was refused.
                    assert_eq!(answer["token"], c.name, "{what}");
                    assert!(
                        answer["role"].is_string() && answer["refused"].is_string(),
                        "{what}"
                    );
                    assert!(answer["error"].as_str().unwrap().contains(c.name), "{what}");
                    refusals += 1;
                    if path.starts_with("/v1/deployments")
                        && c.name == "op-a"
                        && method == Method::PUT
                    {
                        seen_403 = Some(answer.clone());
                    }
                }
                'u' => assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}"),
                other => panic!("bad table letter {other}"),
            }
            // Scoped tokens never see outside their scope in lists.
            if status == StatusCode::OK && method == Method::GET && c.scoped {
                match path.as_str() {
                    "/v1/devices" => {
                        for d in answer.as_array().unwrap() {
                            assert_eq!(d["labels"]["site"], "a", "{what}");
                        }
                        let got = ids(&answer, &["id"]);
                        assert!(got.contains("a-1") && got.contains("a-2"), "{what}");
                    }
                    "/v1/deployments" => {
                        for d in answer.as_array().unwrap() {
                            assert_eq!(d["spec"]["selector"]["site"], "a", "{what}");
                        }
                        let got = ids(&answer, &["spec", "name"]);
                        assert!(got.contains("dep-a") && got.contains("ro-a"), "{what}");
                        assert!(!got.contains("dep-b") && !got.contains("ro-b"), "{what}");
                    }
                    "/v1/rollouts" => {
                        let got = ids(&answer, &["deployment"]);
                        assert_eq!(got, BTreeSet::from(["ro-a".to_string()]), "{what}");
                    }
                    "/v1/config" => {
                        // Everything the admin set, but what reaches site b
                        // or beyond site a (a fleet-wide value is shown).
                        let keys = ids(&answer, &["key"]);
                        for k in ["BY_admin", "S_admin", "D_admin", "FLEET_admin", "FA_admin"] {
                            assert!(keys.contains(k), "{k}: {what}");
                        }
                        for k in ["B_admin", "G_admin"] {
                            assert!(!keys.contains(k), "{k}: {what}");
                        }
                        for e in answer.as_array().unwrap() {
                            assert_ne!(e["scope"]["deployment"], "dep-b", "{what}");
                        }
                    }
                    "/v1/stats" => {
                        assert_eq!(answer["scope"], "site=a", "{what}");
                        // a-1, a-2 and the admin's batch-admin (b-1 is outside).
                        assert_eq!(answer["devices"], 3, "{what}");
                    }
                    _ => {}
                }
            }
            if status == StatusCode::OK && method == Method::GET && !c.scoped && c.token.is_some() {
                match path.as_str() {
                    "/v1/devices" => assert!(ids(&answer, &["id"]).contains("b-1"), "{what}"),
                    "/v1/rollouts" => {
                        assert!(ids(&answer, &["deployment"]).contains("ro-b"), "{what}")
                    }
                    _ => {}
                }
            }
        }
    }

    // The table's refusals were all audited, by the refused token's name; the
    // writes that went through carry the token too.
    let answer = seen_403.expect("op-a was refused a deployment");
    assert_eq!(
        (answer["role"].as_str(), answer["scope"].as_str()),
        (Some("operator"), Some("site=a"))
    );
    let audit: Vec<outpost_hub::store::AuditEntry> =
        hub.api.get("/v1/audit?limit=1000").await.unwrap();
    let refused = audit
        .iter()
        .filter(|e| e.action == "access.refused")
        .count();
    assert_eq!(refused, refusals, "every 403 is in the audit log");
    assert!(audit.iter().any(|e| e.action == "access.refused"
        && e.who == "token:op-a"
        && e.target == "apply deployment wide-op-a"));
    assert!(audit
        .iter()
        .any(|e| e.action == "device.label" && e.who == "token:op-a"));
    assert!(audit
        .iter()
        .any(|e| e.action == "rollout.pause" && e.who == "token:op-a"));
    assert!(audit
        .iter()
        .any(|e| e.action == "token.revoke" && e.who == "token:admin" && e.target == "gone"));

    // What the scoped operator could not do did not happen.
    let b1: Value = hub.api.get("/v1/devices/b-1").await.unwrap();
    assert_eq!(b1["labels"], json!({ "site": "b" }), "{b1}");
    let dep_b: Value = hub.api.get("/v1/deployments/dep-b").await.unwrap();
    assert_eq!(dep_b["spec"]["selector"], json!({ "site": "b" }));

    // `token list`: an aligned table naming role, scope and state.
    let list = hub.cli(&["token", "list"]);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap()
            .to_string()
    };
    assert!(
        line("op-a").contains("operator") && line("op-a").contains("site=a"),
        "{list}"
    );
    assert!(line("gone").contains("revoked"), "{list}");
    assert!(
        line("viewer").contains("never") || line("viewer").contains("ago"),
        "{list}"
    );
    let listed = cli_json(&hub, &["token", "list", "--json"]);
    assert!(
        !listed.to_string().contains(&op_a),
        "no secret is ever listed"
    );
    // The last admin token cannot be revoked (nobody could manage tokens after).
    let err = hub.cli_err(&["token", "revoke", "admin"]);
    assert!(err.contains("last admin token"), "{err}");
}

/// `outpost-hub init` defaults: TLS on; the CLI with nothing but `--data-dir`
/// reaches the hub over https with the data directory's certificate pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_uses_tls_by_default_and_refuses_a_wrong_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    let lease = PortLease::new().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["init", "--http-listen", &lease.addr().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let cert = DataDir::new(&dir).api_cert();
    let der = outpost_hub::tls::load_certs(&cert).unwrap();
    assert!(
        printed.contains(&outpost_hub::tls::fingerprint(&der[0])),
        "init prints the certificate's fingerprint: {printed}"
    );
    // The lease is a lock, not a bound socket: the hub binds the port.
    let hub = HubProc::start_with(
        HubServe::new(Path::new(BIN), &dir)
            .http_listen(format!("127.0.0.1:{}", hub_port(&dir)).parse().unwrap()),
    )
    .await;
    let cli = |data_dir: &Path, extra: &[&str]| {
        std::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("OUTPOST_HUB_URL")
            .env_remove("OUTPOST_HUB_TOKEN")
            .env_remove("OUTPOST_HUB_CA")
            .output()
            .unwrap()
    };
    let key = SigningKey::generate().unwrap().public_key().to_string();
    hub.cli(&["device", "add", "tls-1", "--public-key", &key]);
    // No --url: https://<http_listen> from hub.toml, certificate pinned.
    let out = cli(&dir, &["devices"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls-1"));
    // Plain HTTP to it fails: it speaks only TLS.
    let plain = format!("http://{}", hub.addrs.http);
    let out = cli(&dir, &["--url", &plain, "devices"]);
    assert!(!out.status.success());

    // Another data directory's certificate pinned: refused, naming the URL,
    // the pinned file and both fingerprints.
    let other = tmp.path().join("other");
    init(&other);
    let other_cert = DataDir::new(&other).api_cert();
    std::fs::copy(DataDir::new(&dir).token(), DataDir::new(&other).token()).unwrap();
    let url = hub.addrs.url();
    let out = cli(&other, &["--url", &url, "devices"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url), "{err}");
    assert!(err.contains(&other_cert.display().to_string()), "{err}");
    assert!(err.contains("not the one pinned"), "{err}");
    assert!(
        err.contains(&outpost_hub::tls::fingerprint(&der[0])),
        "{err}"
    );

    // A remote machine: no data directory, the hub's certificate as CA file
    // (flag or environment), the token given.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let token = std::fs::read_to_string(DataDir::new(&dir).token()).unwrap();
    let remote = ["--url", &url, "--token", token.trim()];
    let ca = cert.display().to_string();
    let out = cli(
        &empty,
        &[&remote[..], &["--ca-file", &ca, "devices"]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&empty)
        .args(remote)
        .arg("devices")
        .env("OUTPOST_HUB_CA", &cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The wrong CA file: refused, naming it.
    let other_ca = other_cert.display().to_string();
    let out = cli(
        &empty,
        &[&remote[..], &["--ca-file", &other_ca, "devices"]].concat(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&other_ca) && err.contains(&url), "{err}");
    let out = cli(
        &empty,
        &[
            &remote[..],
            &["--ca-file", "/nonexistent/ca.pem", "devices"],
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );

    // The library client pins the same way.
    let api = ApiClient::with_trust(&url, token.trim(), Trust::Pin(cert.clone())).unwrap();
    let devices: Value = api.get("/v1/devices").await.unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 1);
}

/// The port `init --http-listen` wrote to hub.toml.
fn hub_port(dir: &Path) -> u16 {
    let config = outpost_hub::config::HubConfig::load(&DataDir::new(dir).config()).unwrap();
    config.http_listen.port()
}

/// `[api] tls = false`: plain HTTP, said loudly in the log, and the CLI
/// follows hub.toml to `http://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_off_serves_plain_http_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hub");
    init(&dir);
    let path = DataDir::new(&dir).config();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("[api]\ntls = true"), "{text}");
    std::fs::write(
        &path,
        text.replace("[api]\ntls = true", "[api]\ntls = false"),
    )
    .unwrap();
    let hub = HubProc::start(&dir, None).await;
    let plain = format!("http://{}", hub.addrs.http);
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--url", &plain, "devices"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The fleet is empty: the answer says so.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no devices\n");
    // https to a plain server fails.
    let tls = format!("https://{}", hub.addrs.http);
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--url", &tls, "devices"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = std::fs::read_to_string(dir.join("serve-1.log")).unwrap();
    assert!(log.contains("TLS IS OFF"), "{log}");
}
