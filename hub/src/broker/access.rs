//! Who gets into the embedded broker and what they may do there: the login
//! check (rumqttd's external auth) and the per-packet topic check (our
//! rumqttd patch, third_party/README.md), both answered from the hub's store.
//!
//! - A device logs in with its id as client id and username and the password
//!   of `outpost_protocol::login`, checked against the public key registered
//!   for that id. Removing the device removes its key, so its next login is
//!   refused, and its next packet closes its connection (the topic check asks
//!   the store whether the device is still registered).
//! - The hub's two links log in with their own client ids and a secret made
//!   for this process: the broker runs inside the hub, so the secret never
//!   leaves memory.
//! - Anything else (no login, another client id, a device id in someone
//!   else's name) is refused, logged and counted.

use super::acl::{self, Who};
use crate::store::Store;
use outpost_protocol::login;
use rumqttd::AclAccess;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why a login was refused (logged with the client id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no username and password")]
    NoLogin,
    #[error("username {username:?} is not the client id")]
    UsernameMismatch { username: String },
    #[error("the client id is neither a device id nor the hub's")]
    NotAClient,
    #[error("no device with this id is registered")]
    UnknownDevice,
    #[error("the password is not this device's login")]
    BadDevicePassword,
    #[error("the password is not the hub's")]
    BadHubPassword,
    #[error("the store could not be read: {0}")]
    Store(String),
}

/// Counters of what the broker refused, for `/v1/stats`.
#[derive(Debug, Default)]
pub struct Refused {
    pub logins: AtomicU64,
    pub topics: AtomicU64,
}

/// The broker's view of who may do what.
pub struct BrokerAccess {
    hub_ids: [String; 2],
    hub_secret: String,
    store: Store,
    pub refused: Arc<Refused>,
}

impl BrokerAccess {
    /// `hub_ids`: the ingest and publish links' client ids; `hub_secret`:
    /// a fresh random password for them (`signing::new_token`).
    pub fn new(hub_ids: [String; 2], hub_secret: String, store: Store) -> Self {
        BrokerAccess {
            hub_ids,
            hub_secret,
            store,
            refused: Arc::default(),
        }
    }

    /// The client id the readiness probe logs in with (the ingest link's; the
    /// probe's clean session ends before the link connects).
    pub fn hub_id(&self) -> &str {
        &self.hub_ids[0]
    }

    /// The password the hub's links log in with.
    pub fn hub_password(&self) -> &str {
        &self.hub_secret
    }

    /// Check a CONNECT's login.
    pub fn check_login(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<(), Refusal> {
        if username.is_empty() && password.is_empty() {
            return Err(Refusal::NoLogin);
        }
        if username != client_id {
            return Err(Refusal::UsernameMismatch {
                username: username.chars().take(80).collect(),
            });
        }
        match acl::who(client_id, &self.hub_ids) {
            Who::Hub => {
                // Length is not secret; the comparison does not stop early.
                let (a, b) = (password.as_bytes(), self.hub_secret.as_bytes());
                if a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
                {
                    Ok(())
                } else {
                    Err(Refusal::BadHubPassword)
                }
            }
            Who::Nobody => Err(Refusal::NotAClient),
            Who::Device(id) => {
                let rec = self
                    .store
                    .device(&id)
                    .map_err(|e| Refusal::Store(e.to_string()))?
                    .ok_or(Refusal::UnknownDevice)?;
                if login::password_is_valid(&rec.public_key, &id, password) {
                    Ok(())
                } else {
                    Err(Refusal::BadDevicePassword)
                }
            }
        }
    }

    /// [`Self::check_login`], logged and counted: rumqttd's auth handler.
    pub fn login(&self, client_id: &str, username: &str, password: &str) -> bool {
        match self.check_login(client_id, username, password) {
            Ok(()) => true,
            Err(reason) => {
                self.refused.logins.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client_id = %client_id.chars().take(80).collect::<String>(), %reason, "broker login refused");
                false
            }
        }
    }

    /// The topic check of one PUBLISH or SUBSCRIBE: the rule of `acl`, and for
    /// a device that it is still registered.
    pub fn allows(&self, client_id: &str, access: AclAccess, topic: &str) -> bool {
        let who = acl::who(client_id, &self.hub_ids);
        let mut ok = acl::may(&who, access, topic);
        if ok {
            if let Who::Device(id) = &who {
                ok = matches!(self.store.device(id), Ok(Some(_)));
            }
        }
        if !ok {
            self.refused.topics.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client_id, ?access, topic = %topic.chars().take(200).collect::<String>(), "broker refused a topic; closing the connection");
        }
        ok
    }
}
