//! API roles and which RPC each may call.
//!
//! A client's role is carried in its certificate's Organization
//! (`plinth:admin`, `plinth:operator`, `plinth:reader`); when a certificate
//! carries several, the strongest wins. apid checks the table below before
//! it forwards a call.
//!
//! | RPC            | reader | operator | admin |
//! |----------------|--------|----------|-------|
//! | Version        | yes    | yes      | yes   |
//! | ServiceList    | yes    | yes      | yes   |
//! | Logs           | yes    | yes      | yes   |
//! | Dmesg          | yes    | yes      | yes   |
//! | Events         | yes    | yes      | yes   |
//! | GetConfig      | no     | yes      | yes   |
//! | ServiceRestart | no     | yes      | yes   |
//! | Reboot         | no     | yes      | yes   |
//! | ApplyConfig    | no     | no       | yes   |
//! | Shutdown       | no     | no       | yes   |
//! | Certificates   | yes    | yes      | yes   |
//! | Backup         | no     | no       | yes   |
//! | Restore        | no     | no       | yes   |
//! | Reset          | no     | no       | yes   |
//! | EtcdMembers    | yes    | yes      | yes   |
//! | EtcdSnapshot   | no     | no       | yes   |
//! | EtcdRemoveMember | no   | no       | yes   |
//!
//! GetConfig is not a reader's: the config holds the CA key and join token.
//! Nor is Backup (or EtcdSnapshot): the store holds every Secret.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Operator,
    Admin,
}

const ORG_PREFIX: &str = "plinth:";

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The Organization value that carries this role in a certificate.
    pub fn organization(self) -> String {
        format!("{ORG_PREFIX}{}", self.name())
    }

    /// Whether this role may call `rpc`.
    pub fn may_call(self, rpc: Rpc) -> bool {
        self >= rpc.minimum_role()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected admin, operator or reader"))
    }
}

/// Every RPC of `MachineService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Version,
    ApplyConfig,
    GetConfig,
    Reboot,
    Shutdown,
    ServiceList,
    ServiceRestart,
    Logs,
    Dmesg,
    Events,
    Upgrade,
    UpgradeResume,
    Rollback,
    Kubeconfig,
    Certificates,
    Backup,
    Restore,
    Reset,
    EtcdMembers,
    EtcdSnapshot,
    EtcdRemoveMember,
}

impl Rpc {
    pub const ALL: [Rpc; 21] = [
        Rpc::Version,
        Rpc::ApplyConfig,
        Rpc::GetConfig,
        Rpc::Reboot,
        Rpc::Shutdown,
        Rpc::ServiceList,
        Rpc::ServiceRestart,
        Rpc::Logs,
        Rpc::Dmesg,
        Rpc::Events,
        Rpc::Upgrade,
        Rpc::UpgradeResume,
        Rpc::Rollback,
        Rpc::Kubeconfig,
        Rpc::Certificates,
        Rpc::Backup,
        Rpc::Restore,
        Rpc::Reset,
        Rpc::EtcdMembers,
        Rpc::EtcdSnapshot,
        Rpc::EtcdRemoveMember,
    ];

    pub fn minimum_role(self) -> Role {
        match self {
            Rpc::Version
            | Rpc::ServiceList
            | Rpc::Logs
            | Rpc::Dmesg
            | Rpc::Events
            | Rpc::Certificates
            | Rpc::EtcdMembers => Role::Reader,
            Rpc::GetConfig | Rpc::ServiceRestart | Rpc::Reboot => Role::Operator,
            Rpc::ApplyConfig
            | Rpc::Shutdown
            | Rpc::Upgrade
            | Rpc::UpgradeResume
            | Rpc::Rollback
            | Rpc::Kubeconfig
            | Rpc::Backup
            | Rpc::Restore
            | Rpc::Reset
            | Rpc::EtcdSnapshot
            | Rpc::EtcdRemoveMember => Role::Admin,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rpc::Version => "Version",
            Rpc::ApplyConfig => "ApplyConfig",
            Rpc::GetConfig => "GetConfig",
            Rpc::Reboot => "Reboot",
            Rpc::Shutdown => "Shutdown",
            Rpc::ServiceList => "ServiceList",
            Rpc::ServiceRestart => "ServiceRestart",
            Rpc::Logs => "Logs",
            Rpc::Dmesg => "Dmesg",
            Rpc::Events => "Events",
            Rpc::Upgrade => "Upgrade",
            Rpc::UpgradeResume => "UpgradeResume",
            Rpc::Rollback => "Rollback",
            Rpc::Kubeconfig => "Kubeconfig",
            Rpc::Certificates => "Certificates",
            Rpc::Backup => "Backup",
            Rpc::Restore => "Restore",
            Rpc::Reset => "Reset",
            Rpc::EtcdMembers => "EtcdMembers",
            Rpc::EtcdSnapshot => "EtcdSnapshot",
            Rpc::EtcdRemoveMember => "EtcdRemoveMember",
        }
    }

    /// The RPC a gRPC path names, e.g. `/plinth.machine.v1.MachineService/Logs`.
    pub fn from_path(path: &str) -> Option<Rpc> {
        let method = path.strip_prefix("/plinth.machine.v1.MachineService/")?;
        Rpc::ALL.into_iter().find(|r| r.name() == method)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoleError {
    #[error("the client certificate cannot be parsed: {0}")]
    Parse(String),
    #[error(
        "the client certificate carries no role (its Organization must be plinth:admin, plinth:operator or plinth:reader)"
    )]
    NoRole,
}

/// The role a client certificate (DER) carries.
pub fn role_from_cert_der(der: &[u8]) -> Result<Role, RoleError> {
    let info = crate::pki::cert_info_der(der).map_err(|e| RoleError::Parse(e.to_string()))?;
    info.organizations
        .iter()
        .filter_map(|o| o.strip_prefix(ORG_PREFIX)?.parse::<Role>().ok())
        .max()
        .ok_or(RoleError::NoRole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert!(Role::Reader.may_call(Rpc::Version));
        assert!(!Role::Reader.may_call(Rpc::GetConfig));
        assert!(!Role::Reader.may_call(Rpc::ApplyConfig));
        assert!(Role::Operator.may_call(Rpc::Reboot));
        assert!(!Role::Operator.may_call(Rpc::ApplyConfig));
        assert!(!Role::Operator.may_call(Rpc::Shutdown));
        assert!(Role::Reader.may_call(Rpc::EtcdMembers));
        assert!(!Role::Operator.may_call(Rpc::EtcdSnapshot), "a snapshot holds every Secret");
        assert!(!Role::Operator.may_call(Rpc::EtcdRemoveMember));
        for rpc in Rpc::ALL {
            assert!(Role::Admin.may_call(rpc));
            assert_eq!(Rpc::from_path(&format!("/plinth.machine.v1.MachineService/{}", rpc.name())), Some(rpc));
        }
        assert_eq!(Rpc::from_path("/plinth.machine.v1.InitService/ApidTls"), None);
    }

    #[test]
    fn certificate_without_role_is_refused() {
        let ca = crate::pki::generate_ca("demo").unwrap();
        // The CA's own certificate carries O=plinth, which is no role.
        let der = crate::pki::pem_to_der(&ca.cert_pem).unwrap();
        assert_eq!(role_from_cert_der(&der), Err(RoleError::NoRole));
    }
}
