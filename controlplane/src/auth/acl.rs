//! ACL evaluation: a pure function of the ACL list, the superusers, the
//! principal, the operation and the resource.
//!
//! Rules (Kafka-like):
//! - superusers may do everything;
//! - an ACL applies when its principal is the caller (or `*`), its pattern
//!   matches the resource, and it lists the operation; for
//!   [`Operation::Describe`], an ACL listing any operation on the resource
//!   implies Describe;
//! - a matching Deny wins over any Allow;
//! - no matching Allow: denied (deny by default).
//!
//! Resources: a stream (by name, matched with the ACL's glob) or the
//! cluster, which only ACLs with the pattern `*` cover (ACL management,
//! principals, quotas, membership, leadership transfer, node listing).

use crate::types::{pattern_matches, Acl, Operation, Permission};

/// What an admin call acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    Stream(&'a str),
    Cluster,
}

impl Resource<'_> {
    /// `stream:<name>` or `cluster`, as written to the audit log.
    pub fn describe(&self) -> String {
        match self {
            Resource::Stream(name) => format!("stream:{name}"),
            Resource::Cluster => "cluster".to_string(),
        }
    }
}

/// The verdict and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Principal name in an ACL that matches every caller.
pub const ANY_PRINCIPAL: &str = "*";

fn applies(acl: &Acl, principal: &str, op: Operation, resource: Resource<'_>) -> bool {
    if acl.principal != principal && acl.principal != ANY_PRINCIPAL {
        return false;
    }
    let covers = match resource {
        Resource::Stream(name) => pattern_matches(&acl.resource_pattern, name),
        Resource::Cluster => acl.resource_pattern == "*",
    };
    if !covers {
        return false;
    }
    acl.operations.contains(&op)
        || (op == Operation::Describe
            && acl.permission == Permission::Allow
            && !acl.operations.is_empty())
}

/// Decides whether `principal` may perform `op` on `resource`.
pub fn authorize(
    acls: &[Acl],
    superusers: &[String],
    principal: &str,
    op: Operation,
    resource: Resource<'_>,
) -> Decision {
    if superusers.iter().any(|s| s == principal) {
        return Decision::Allow;
    }
    let mut allowed = false;
    for acl in acls.iter().filter(|a| applies(a, principal, op, resource)) {
        match acl.permission {
            Permission::Deny => {
                return Decision::Deny(format!(
                    "a Deny ACL on `{}` forbids {op:?} for `{principal}`",
                    acl.resource_pattern
                ))
            }
            Permission::Allow => allowed = true,
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(format!(
            "no ACL allows {op:?} on {} for `{principal}`: ask an administrator for \
             `msctl acl put --principal {principal} --resource <pattern> --op {op:?}`",
            resource.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acl(principal: &str, pattern: &str, ops: &[Operation], permission: Permission) -> Acl {
        Acl {
            principal: principal.into(),
            resource_pattern: pattern.into(),
            operations: ops.to_vec(),
            permission,
            source_cidrs: vec![],
        }
    }

    #[test]
    fn deny_by_default_and_deny_wins() {
        let su = vec!["root".to_string()];
        let mut acls = vec![];
        let s = Resource::Stream("orders");
        assert!(!authorize(&acls, &su, "alice", Operation::Write, s).is_allowed());
        assert!(authorize(&acls, &su, "root", Operation::Write, s).is_allowed());
        acls.push(acl("alice", "ord*", &[Operation::Write], Permission::Allow));
        assert!(authorize(&acls, &su, "alice", Operation::Write, s).is_allowed());
        assert!(authorize(&acls, &su, "alice", Operation::Describe, s).is_allowed());
        assert!(!authorize(&acls, &su, "alice", Operation::Delete, s).is_allowed());
        assert!(!authorize(&acls, &su, "alice", Operation::Write, Resource::Cluster).is_allowed());
        acls.push(acl("*", "orders", &[Operation::Write], Permission::Deny));
        assert!(!authorize(&acls, &su, "alice", Operation::Write, s).is_allowed());
        assert!(authorize(&acls, &su, "root", Operation::Write, s).is_allowed());
    }

    #[test]
    fn cluster_needs_the_star_pattern() {
        let acls = vec![
            acl("ops", "x*", &[Operation::ClusterAdmin], Permission::Allow),
            acl("ops2", "*", &[Operation::ClusterAdmin], Permission::Allow),
        ];
        assert!(!authorize(
            &acls,
            &[],
            "ops",
            Operation::ClusterAdmin,
            Resource::Cluster
        )
        .is_allowed());
        assert!(authorize(
            &acls,
            &[],
            "ops2",
            Operation::ClusterAdmin,
            Resource::Cluster
        )
        .is_allowed());
    }

    fn op() -> impl Strategy<Value = Operation> {
        prop_oneof![
            Just(Operation::Read),
            Just(Operation::Write),
            Just(Operation::Create),
            Just(Operation::Delete),
            Just(Operation::Describe),
            Just(Operation::Alter),
            Just(Operation::ClusterAdmin),
        ]
    }

    fn an_acl() -> impl Strategy<Value = Acl> {
        (
            prop_oneof![Just("a"), Just("b"), Just("*")],
            prop_oneof![Just("s1"), Just("s*"), Just("*"), Just("t")],
            proptest::collection::vec(op(), 1..3),
            any::<bool>(),
        )
            .prop_map(|(p, pat, ops, allow)| {
                acl(
                    p,
                    pat,
                    &ops,
                    if allow {
                        Permission::Allow
                    } else {
                        Permission::Deny
                    },
                )
            })
    }

    proptest! {
        /// Adding a Deny never grants; adding an Allow never revokes; order
        /// does not matter; superusers are always allowed.
        #[test]
        fn monotone_and_order_free(
            acls in proptest::collection::vec(an_acl(), 0..8),
            extra in an_acl(),
            o in op(),
            who in prop_oneof![Just("a"), Just("b")],
            res in prop_oneof![Just(Some("s1")), Just(Some("t")), Just(None)],
        ) {
            let r = res.map(Resource::Stream).unwrap_or(Resource::Cluster);
            let before = authorize(&acls, &[], who, o, r).is_allowed();
            let mut with = acls.clone();
            with.push(extra.clone());
            let after = authorize(&with, &[], who, o, r).is_allowed();
            match extra.permission {
                Permission::Deny => prop_assert!(!after || before),
                Permission::Allow => prop_assert!(after || !before),
            }
            let mut reversed = with.clone();
            reversed.reverse();
            prop_assert_eq!(after, authorize(&reversed, &[], who, o, r).is_allowed());
            prop_assert!(authorize(&with, &[who.to_string()], who, o, r).is_allowed());
            // Without any Allow for the caller, nothing is allowed.
            let no_allow: Vec<Acl> = with.iter().filter(|a| a.permission == Permission::Deny).cloned().collect();
            prop_assert!(!authorize(&no_allow, &[], who, o, r).is_allowed());
        }
    }
}
