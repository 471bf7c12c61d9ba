//! Devices' broker certificates (for an external Mosquitto, see
//! `broker::ca`): issued for the key a device registered with, revoked when
//! it is removed, each step in the audit log.

use super::{Hub, HubError};
use crate::broker::ca::BrokerCa;
use outpost_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A certificate issued for a device (`POST /v1/devices/{id}/broker-cert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerCert {
    pub device: DeviceId,
    /// Hex serial: what the CRL names once the device is removed.
    pub serial: String,
    /// PEM certificate: CN = the device id, for its registered ed25519 key.
    pub cert_pem: String,
}

impl Hub {
    /// The same hub issuing broker certificates from `ca`.
    pub fn with_broker_ca(mut self, ca: Arc<BrokerCa>) -> Hub {
        self.broker_ca = Some(ca);
        self
    }

    /// Whether this hub issues broker certificates.
    pub fn has_broker_ca(&self) -> bool {
        self.broker_ca.is_some()
    }

    fn ca(&self) -> Result<Arc<BrokerCa>, HubError> {
        self.broker_ca
            .clone()
            .ok_or_else(|| HubError::Internal("this hub has no broker CA".into()))
    }

    /// Issue a certificate for registered device `id`'s key.
    pub async fn issue_broker_cert(
        self: &Arc<Self>,
        id: DeviceId,
        who: String,
    ) -> Result<BrokerCert, HubError> {
        let ca = self.ca()?;
        let rec = self.store.device(&id)?.ok_or_else(|| HubError::NotFound {
            what: "device",
            name: id.to_string(),
        })?;
        let now = self.now();
        let issued =
            tokio::task::spawn_blocking(move || ca.issue_device(&rec.id, &rec.public_key, now))
                .await
                .map_err(|e| HubError::Internal(e.to_string()))??;
        let serial = issued.serial.clone();
        let target = id.clone();
        self.transact(who, move |op| {
            op.audit(
                "device.broker_cert",
                target.as_str(),
                serde_json::json!({ "serial": serial }),
            )?;
            Ok(())
        })
        .await?;
        tracing::info!(device_id = %id, serial = %issued.serial, "broker certificate issued");
        Ok(BrokerCert {
            device: id,
            serial: issued.serial,
            cert_pem: issued.cert_pem,
        })
    }

    /// Revoke every broker certificate of `id` and rewrite the CRL; the
    /// serials revoked. Without a CA nothing was ever issued.
    pub(crate) async fn revoke_broker_certs(&self, id: &DeviceId) -> Result<Vec<String>, HubError> {
        let Some(ca) = self.broker_ca.clone() else {
            return Ok(Vec::new());
        };
        let now = self.now();
        let subject = id.to_string();
        let serials = tokio::task::spawn_blocking(move || ca.revoke_subject(&subject, now))
            .await
            .map_err(|e| HubError::Internal(e.to_string()))??;
        if !serials.is_empty() {
            tracing::info!(device_id = %id, ?serials, "broker certificates revoked");
        }
        Ok(serials)
    }

    /// Tell the broker (`[mqtt] on_revoke`) that the CRL changed.
    pub(crate) async fn after_revocation(&self) -> Result<(), HubError> {
        let Some(ca) = self.broker_ca.clone().filter(|ca| ca.has_hook()) else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || ca.run_hook())
            .await
            .map_err(|e| HubError::Internal(e.to_string()))??;
        Ok(())
    }
}
