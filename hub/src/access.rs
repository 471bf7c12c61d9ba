//! Who may do what through the API: token roles (`admin`, `operator`,
//! `viewer`), label scopes, and the one pure decision [`decide`] from
//! (role, scope, request) to allow or deny with a reason.
//!
//! "Inside the scope" is [`crate::scope::covers`], the rule the admission
//! policy uses: a device is inside when it carries every label of the scope; a
//! deployment (and its rollout) is inside when its selector is at least as
//! narrow as the scope, so every device it can ever reach is inside.
//!
//! No I/O here: handlers look up what a request touches (a device's labels, a
//! deployment's selector) and ask.

use crate::scope::{covers, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: tokens, device registration and removal, the audit log,
    /// and all an operator may do. Admin tokens are made unscoped (`tokens`
    /// refuses a scoped one); were one scoped, it would act as a scoped
    /// operator and nothing fleet-wide.
    Admin,
    /// Read; apply and delete deployments; rollout commands; label devices.
    Operator,
    /// Read only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "role {other:?} is unknown; use admin, operator or viewer"
            )),
        }
    }
}

/// What an authenticated caller holds: its token's name, role and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
}

impl Caller {
    /// What the audit log records as the author: `token:<name>`.
    pub fn who(&self) -> String {
        format!("token:{}", self.name)
    }

    /// Does this caller see a device with these labels?
    pub fn sees_device(&self, labels: &BTreeMap<String, String>) -> bool {
        covers(&self.scope.0, labels)
    }

    /// Does this caller see a deployment (or its rollout) with this selector?
    pub fn sees_deployment(&self, selector: &BTreeMap<String, String>) -> bool {
        covers(&self.scope.0, selector)
    }
}

/// A request, with what the decision needs to know about its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `GET /v1/devices/{id}`, its events.
    ReadDevice {
        id: &'a str,
        labels: &'a BTreeMap<String, String>,
    },
    /// `GET /v1/devices/{id}/logs/{app}`: an app's output, streamed from the
    /// device. Logs may hold what a viewer should not see, and asking costs
    /// the device work: operators and admins only, within their scope.
    ReadLogs {
        id: &'a str,
        labels: &'a BTreeMap<String, String>,
    },
    /// `GET /v1/deployments/{name}`, its rollout.
    ReadDeployment {
        name: &'a str,
        selector: &'a BTreeMap<String, String>,
    },
    /// `GET /v1/devices`, `/v1/deployments`, `/v1/rollouts`, `/v1/stats`:
    /// allowed to every role; the answer is cut down to the scope.
    List,
    /// `POST /v1/devices`, `/v1/devices/batch`.
    AddDevice,
    /// `DELETE /v1/devices/{id}`.
    RemoveDevice { id: &'a str },
    /// `POST /v1/devices/{id}/broker-cert`: a client certificate for an
    /// external broker, i.e. a device credential.
    IssueBrokerCert { id: &'a str },
    /// `PATCH /v1/devices/{id}/labels`: the labels before and after.
    LabelDevice {
        id: &'a str,
        before: &'a BTreeMap<String, String>,
        after: &'a BTreeMap<String, String>,
    },
    /// `PUT /v1/deployments`: the new selector, and the current one when the
    /// name is taken (replacing a deployment is changing it).
    ApplyDeployment {
        name: &'a str,
        selector: &'a BTreeMap<String, String>,
        current: Option<&'a BTreeMap<String, String>>,
    },
    /// `DELETE /v1/deployments/{name}`.
    DeleteDeployment {
        name: &'a str,
        selector: &'a BTreeMap<String, String>,
    },
    /// `POST /v1/rollouts/{name}/{command}`.
    RolloutCommand {
        name: &'a str,
        command: &'a str,
        selector: &'a BTreeMap<String, String>,
    },
    /// `GET /v1/audit`.
    ReadAudit,
    /// `/v1/tokens`: list, create, revoke.
    ManageTokens,
    /// `/v1/secrets`: list (names, versions, hashes), set, remove.
    ManageSecrets,
    /// `PATCH /v1/config`: variables at `scope` (in words); `reach` is the
    /// labels every device it can reach carries (a device's own labels, a
    /// selector, a deployment's selector), `None` for the whole fleet.
    ChangeConfig {
        scope: &'a str,
        reach: Option<&'a BTreeMap<String, String>>,
    },
}

impl Request<'_> {
    /// What was asked, in words, for refusals and the audit log.
    pub fn describe(&self) -> String {
        match self {
            Request::ReadDevice { id, .. } => format!("read device {id}"),
            Request::ReadLogs { id, .. } => format!("read the logs of device {id}"),
            Request::ReadDeployment { name, .. } => format!("read deployment {name}"),
            Request::List => "list".into(),
            Request::AddDevice => "register devices".into(),
            Request::RemoveDevice { id } => format!("remove device {id}"),
            Request::IssueBrokerCert { id } => {
                format!("issue a broker certificate for device {id}")
            }
            Request::LabelDevice { id, .. } => format!("label device {id}"),
            Request::ApplyDeployment { name, .. } => format!("apply deployment {name}"),
            Request::DeleteDeployment { name, .. } => format!("delete deployment {name}"),
            Request::RolloutCommand { name, command, .. } => {
                format!("{command} the rollout of {name}")
            }
            Request::ReadAudit => "read the audit log".into(),
            Request::ManageTokens => "manage tokens".into(),
            Request::ManageSecrets => "manage secrets".into(),
            Request::ChangeConfig { scope, .. } => format!("change the configuration of {scope}"),
        }
    }
}

/// Why [`decide`] said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "token {token} ({role}, scope {}) may not {refused}: {reason}",
    scope_text(scope)
)]
pub struct Denied {
    pub token: String,
    pub role: Role,
    pub scope: Scope,
    /// What was asked ([`Request::describe`]).
    pub refused: String,
    pub reason: String,
}

fn scope_text(scope: &Scope) -> String {
    if scope.is_everything() {
        "whole fleet".into()
    } else {
        scope.to_string()
    }
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "{}".into();
    }
    let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(","))
}

/// May `caller` make `request`? Pure and total: the one authorization rule.
pub fn decide(caller: &Caller, request: &Request) -> Result<(), Denied> {
    let deny = |reason: String| {
        Err(Denied {
            token: caller.name.clone(),
            role: caller.role,
            scope: caller.scope.clone(),
            refused: request.describe(),
            reason,
        })
    };
    let scoped = !caller.scope.is_everything();
    let outside_device = |labels: &BTreeMap<String, String>, what: &str| {
        format!(
            "{what} labels {} are outside the scope {}",
            labels_text(labels),
            caller.scope
        )
    };
    let outside_selector = |selector: &BTreeMap<String, String>, what: &str| {
        format!(
            "{what} selector {} can reach devices outside the scope {}",
            labels_text(selector),
            caller.scope
        )
    };
    let writes = matches!(caller.role, Role::Admin | Role::Operator);
    match request {
        Request::List => Ok(()),
        Request::ReadDevice { labels, .. } => {
            if caller.sees_device(labels) {
                Ok(())
            } else {
                deny(outside_device(labels, "its"))
            }
        }
        Request::ReadLogs { labels, .. } => {
            if !writes {
                deny(format!(
                    "only admin and operator tokens may, this one is {}",
                    caller.role
                ))
            } else if caller.sees_device(labels) {
                Ok(())
            } else {
                deny(outside_device(labels, "its"))
            }
        }
        Request::ReadDeployment { selector, .. } => {
            if caller.sees_deployment(selector) {
                Ok(())
            } else {
                deny(outside_selector(selector, "its"))
            }
        }
        Request::AddDevice
        | Request::RemoveDevice { .. }
        | Request::IssueBrokerCert { .. }
        | Request::ManageSecrets
        | Request::ReadAudit => {
            if caller.role != Role::Admin {
                deny(format!(
                    "only admin tokens may, this one is {}",
                    caller.role
                ))
            } else if scoped {
                deny("only an unscoped admin token may (it concerns the whole fleet)".into())
            } else {
                Ok(())
            }
        }
        Request::ManageTokens => {
            if caller.role != Role::Admin {
                deny(format!(
                    "only admin tokens may, this one is {}",
                    caller.role
                ))
            } else if scoped {
                // A scoped admin could mint an unscoped token.
                deny("only an unscoped admin token may (a token it made could reach beyond its scope)".into())
            } else {
                Ok(())
            }
        }
        _ if !writes => deny(format!("{} tokens only read", caller.role)),
        Request::LabelDevice { before, after, .. } => {
            if !caller.sees_device(before) {
                deny(outside_device(before, "its"))
            } else if !caller.sees_device(after) {
                deny(format!(
                    "the change would move it out of the scope {} (new labels {})",
                    caller.scope,
                    labels_text(after)
                ))
            } else {
                Ok(())
            }
        }
        Request::ApplyDeployment {
            selector, current, ..
        } => {
            if let Some(current) = current.filter(|c| !caller.sees_deployment(c)) {
                deny(outside_selector(current, "the existing deployment's"))
            } else if !caller.sees_deployment(selector) {
                deny(outside_selector(selector, "its"))
            } else {
                Ok(())
            }
        }
        Request::ChangeConfig { reach, .. } => match reach {
            None if scoped => deny(
                "a variable for the whole fleet reaches devices outside the scope; \
                 only an unscoped token may set one"
                    .into(),
            ),
            None => Ok(()),
            Some(labels) if caller.sees_deployment(labels) => Ok(()),
            Some(labels) => deny(outside_selector(labels, "its")),
        },
        Request::DeleteDeployment { selector, .. } | Request::RolloutCommand { selector, .. } => {
            if caller.sees_deployment(selector) {
                Ok(())
            } else {
                deny(outside_selector(selector, "the deployment's"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::labels as l;

    fn caller(role: Role, scope: &str) -> Caller {
        Caller {
            name: format!("{role}-{scope}"),
            role,
            scope: Scope::parse(scope).unwrap(),
        }
    }

    #[test]
    fn every_role_and_scope_against_every_request_kind() {
        let a = l(&[("site", "a")]);
        let a_gw = l(&[("site", "a"), ("role", "gw")]);
        let b = l(&[("site", "b")]);
        let none = l(&[]);
        let gw = l(&[("role", "gw")]);
        let requests: Vec<(&str, Request)> = vec![
            ("list", Request::List),
            (
                "read dev a",
                Request::ReadDevice {
                    id: "d",
                    labels: &a_gw,
                },
            ),
            (
                "read dev b",
                Request::ReadDevice {
                    id: "d",
                    labels: &b,
                },
            ),
            (
                "read dev unlabelled",
                Request::ReadDevice {
                    id: "d",
                    labels: &none,
                },
            ),
            (
                "logs dev a",
                Request::ReadLogs {
                    id: "d",
                    labels: &a_gw,
                },
            ),
            (
                "logs dev b",
                Request::ReadLogs {
                    id: "d",
                    labels: &b,
                },
            ),
            (
                "read dep a",
                Request::ReadDeployment {
                    name: "x",
                    selector: &a_gw,
                },
            ),
            (
                "read dep gw",
                Request::ReadDeployment {
                    name: "x",
                    selector: &gw,
                },
            ),
            ("add device", Request::AddDevice),
            ("remove device", Request::RemoveDevice { id: "d" }),
            ("issue broker cert", Request::IssueBrokerCert { id: "d" }),
            (
                "label a->a",
                Request::LabelDevice {
                    id: "d",
                    before: &a,
                    after: &a_gw,
                },
            ),
            (
                "label a->b",
                Request::LabelDevice {
                    id: "d",
                    before: &a,
                    after: &b,
                },
            ),
            (
                "label b->a",
                Request::LabelDevice {
                    id: "d",
                    before: &b,
                    after: &a,
                },
            ),
            (
                "apply new a",
                Request::ApplyDeployment {
                    name: "x",
                    selector: &a_gw,
                    current: None,
                },
            ),
            (
                "apply new gw",
                Request::ApplyDeployment {
                    name: "x",
                    selector: &gw,
                    current: None,
                },
            ),
            (
                "apply over b",
                Request::ApplyDeployment {
                    name: "x",
                    selector: &a,
                    current: Some(&b),
                },
            ),
            (
                "apply over a",
                Request::ApplyDeployment {
                    name: "x",
                    selector: &a,
                    current: Some(&a_gw),
                },
            ),
            (
                "delete dep a",
                Request::DeleteDeployment {
                    name: "x",
                    selector: &a,
                },
            ),
            (
                "delete dep b",
                Request::DeleteDeployment {
                    name: "x",
                    selector: &b,
                },
            ),
            (
                "rollout a",
                Request::RolloutCommand {
                    name: "x",
                    command: "pause",
                    selector: &a,
                },
            ),
            (
                "rollout b",
                Request::RolloutCommand {
                    name: "x",
                    command: "pause",
                    selector: &b,
                },
            ),
            ("audit", Request::ReadAudit),
            ("tokens", Request::ManageTokens),
            (
                "config fleet",
                Request::ChangeConfig {
                    scope: "fleet",
                    reach: None,
                },
            ),
            (
                "config a",
                Request::ChangeConfig {
                    scope: "device d",
                    reach: Some(&a_gw),
                },
            ),
            (
                "config b",
                Request::ChangeConfig {
                    scope: "selector site=b",
                    reach: Some(&b),
                },
            ),
        ];
        // One column per caller: admin, admin scoped a, operator, operator
        // scoped a, viewer, viewer scoped a. `Y` allowed, `.` denied.
        let want: &[(&str, &str)] = &[
            ("list", "YYYYYY"),
            ("read dev a", "YYYYYY"),
            ("read dev b", "Y.Y.Y."),
            ("read dev unlabelled", "Y.Y.Y."),
            ("logs dev a", "YYYY.."),
            ("logs dev b", "Y.Y..."),
            ("read dep a", "YYYYYY"),
            ("read dep gw", "Y.Y.Y."),
            ("add device", "Y....."),
            ("remove device", "Y....."),
            ("issue broker cert", "Y....."),
            ("label a->a", "YYYY.."),
            ("label a->b", "Y.Y..."),
            ("label b->a", "Y.Y..."),
            ("apply new a", "YYYY.."),
            ("apply new gw", "Y.Y..."),
            ("apply over b", "Y.Y..."),
            ("apply over a", "YYYY.."),
            ("delete dep a", "YYYY.."),
            ("delete dep b", "Y.Y..."),
            ("rollout a", "YYYY.."),
            ("rollout b", "Y.Y..."),
            ("audit", "Y....."),
            ("tokens", "Y....."),
            ("config fleet", "Y.Y..."),
            ("config a", "YYYY.."),
            ("config b", "Y.Y..."),
        ];
        let callers = [
            caller(Role::Admin, ""),
            caller(Role::Admin, "site=a"),
            caller(Role::Operator, ""),
            caller(Role::Operator, "site=a"),
            caller(Role::Viewer, ""),
            caller(Role::Viewer, "site=a"),
        ];
        assert_eq!(requests.len(), want.len());
        for ((label, req), (wlabel, row)) in requests.iter().zip(want) {
            assert_eq!(label, wlabel);
            for (c, w) in callers.iter().zip(row.chars()) {
                let got = decide(c, req);
                assert_eq!(
                    got.is_ok(),
                    w == 'Y',
                    "{label} by {} ({}, scope {:?}): {got:?}",
                    c.name,
                    c.role,
                    c.scope.to_string()
                );
                if let Err(d) = got {
                    assert_eq!(d.refused, req.describe());
                    assert_eq!((d.role, &d.scope), (c.role, &c.scope));
                }
            }
        }
    }

    #[test]
    fn refusals_name_the_token_role_scope_and_what_was_refused() {
        let c = caller(Role::Operator, "site=a");
        let gw = l(&[("role", "gw")]);
        let d = decide(
            &c,
            &Request::ApplyDeployment {
                name: "web",
                selector: &gw,
                current: None,
            },
        )
        .unwrap_err();
        let text = d.to_string();
        for part in [
            "operator-site=a",
            "operator",
            "site=a",
            "apply deployment web",
            "{role=gw}",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }
        let v = caller(Role::Viewer, "");
        let d = decide(
            &v,
            &Request::DeleteDeployment {
                name: "web",
                selector: &gw,
            },
        )
        .unwrap_err();
        assert!(
            d.to_string().contains("whole fleet") && d.reason.contains("only read"),
            "{d}"
        );
    }

    #[test]
    fn roles_parse_and_print() {
        for r in [Role::Admin, Role::Operator, Role::Viewer] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("admin, operator or viewer"));
    }
}
