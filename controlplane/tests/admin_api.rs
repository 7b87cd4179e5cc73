//! The admin API of a real single node over loopback mTLS: bad input gets the
//! right gRPC status with a message that says what to do, unauthorized calls
//! are PERMISSION_DENIED and audited, certificates are checked in the
//! handshake, msctl prints tables and JSON, and the HTTP endpoints answer.

mod admin_support;

use std::io::{Read, Write};
use std::time::Duration;

use admin_support::{ok_stdout, TestNode};
use controlplane::audit::AuditLog;
use controlplane::certs::{self, Validity};
use controlplane::grpc::ADMIN_REQUEST_BYTES_MAX;
use controlplane::pb::admin as pb;
use tonic::Code;

fn create(name: &str) -> pb::CreateStreamRequest {
    pb::CreateStreamRequest {
        name: name.into(),
        partitions: 2,
        replication_factor: 1,
        retention_bytes: 1 << 20,
        retention_ms: 60_000,
        mode: pb::StreamMode::Reliable as i32,
        ..Default::default()
    }
}

fn acl(principal: &str, pattern: &str, ops: &[pb::Operation], deny: bool) -> pb::PutAclRequest {
    pb::PutAclRequest {
        acl: Some(pb::Acl {
            principal: principal.into(),
            resource_pattern: pattern.into(),
            operations: ops.iter().map(|&o| o as i32).collect(),
            permission: if deny {
                pb::Permission::Deny
            } else {
                pb::Permission::Allow
            } as i32,
            source_cidrs: vec![],
        }),
    }
}

/// Asserts the status code and that the message contains `hint`.
fn expect_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, hint: &str) {
    let s = r.expect_err("the call must fail");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(hint),
        "message {:?} lacks {hint:?}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_a_message_that_says_what_to_do() {
    let node = TestNode::start(vec![]).await;
    let mut c = node.admin().await;

    for bad in ["", "a b", "x/y", "..", &"n".repeat(250)] {
        expect_status(
            c.create_stream(create(bad)).await,
            Code::InvalidArgument,
            "[a-zA-Z0-9._-]",
        );
    }
    let mut zero = create("zero-partitions");
    zero.partitions = 0;
    expect_status(
        c.create_stream(zero).await,
        Code::InvalidArgument,
        "use 1..=",
    );
    let mut bad_mode = create("bad-mode");
    bad_mode.mode = 7;
    expect_status(
        c.create_stream(bad_mode).await,
        Code::InvalidArgument,
        "reliable",
    );

    let created = c
        .create_stream(create("orders"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.stream.expect("stream").name, "orders");
    expect_status(
        c.create_stream(create("orders")).await,
        Code::AlreadyExists,
        "pick another name",
    );
    expect_status(
        c.describe_stream(pb::DescribeStreamRequest {
            name: "nope".into(),
        })
        .await,
        Code::NotFound,
        "msctl stream list",
    );
    expect_status(
        c.delete_stream(pb::DeleteStreamRequest {
            name: "nope".into(),
        })
        .await,
        Code::NotFound,
        "list streams",
    );
    expect_status(
        c.put_acl(acl("ghost", "orders", &[pb::Operation::Write], false))
            .await,
        Code::NotFound,
        "create it first",
    );
    expect_status(
        c.list_acls(pb::ListAclsRequest {
            principal: "ghost".into(),
        })
        .await,
        Code::NotFound,
        "msctl principal list",
    );
    c.put_principal(pb::PutPrincipalRequest {
        name: "alice".into(),
    })
    .await
    .expect("principal");
    let mut bad_cidr = acl("alice", "orders", &[pb::Operation::Write], false);
    bad_cidr.acl.as_mut().unwrap().source_cidrs = vec!["198.18.0.300/32".into()];
    expect_status(
        c.put_acl(bad_cidr).await,
        Code::InvalidArgument,
        "e.g. 198.18.0.1/32",
    );
    expect_status(
        c.put_acl(acl("alice", "orders", &[], false)).await,
        Code::InvalidArgument,
        "at least one operation",
    );
    expect_status(
        c.put_acl(pb::PutAclRequest { acl: None }).await,
        Code::InvalidArgument,
        "missing `acl`",
    );
    let quota = |principal: &str, rate: u64| pb::PutQuotaRequest {
        quota: Some(pb::Quota {
            principal: principal.into(),
            bytes_per_s: rate,
            burst_bytes: 1500,
        }),
    };
    expect_status(
        c.put_quota(quota("ghost", 1000)).await,
        Code::NotFound,
        "create it first",
    );
    expect_status(
        c.put_quota(quota("alice", 0)).await,
        Code::InvalidArgument,
        "must both be > 0",
    );
    expect_status(
        c.delete_quota(pb::DeleteQuotaRequest {
            principal: "alice".into(),
        })
        .await,
        Code::NotFound,
        "msctl quota list",
    );
    expect_status(
        c.remove_member(pb::RemoveMemberRequest { id: 42 }).await,
        Code::NotFound,
        "msctl node list",
    );
    expect_status(
        c.remove_member(pb::RemoveMemberRequest { id: 1 }).await,
        Code::FailedPrecondition,
        "add another member first",
    );
    expect_status(
        c.transfer_leadership(pb::TransferLeadershipRequest { to: 42 })
            .await,
        Code::NotFound,
        "voting member",
    );
    expect_status(
        c.add_member(pb::AddMemberRequest {
            id: 0,
            control_addr: "nowhere".into(),
            data_addr: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "ip:port",
    );

    // Oversized: refused by the size limit before decoding.
    let mut huge = create("huge");
    huge.name = "h".repeat(ADMIN_REQUEST_BYTES_MAX + 1);
    let s = c.create_stream(huge).await.expect_err("too large");
    assert!(
        matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{s:?}"
    );
    assert!(s.message().contains("too large"), "{s:?}");

    // The node still serves after all of that (no panic, no wedge).
    let list = c
        .list_streams(pb::ListStreamsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.streams.len(), 1);

    // Refused mutations are audited too.
    let audit = AuditLog::read_all(&node.audit).expect("audit log");
    assert!(audit
        .iter()
        .any(|r| r.action == "CreateStream" && r.result.contains("AlreadyExists")));
    assert!(audit
        .iter()
        .any(|r| r.action == "PutAcl" && r.result.contains("NotFound")));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_calls_are_permission_denied_and_audited() {
    let node = TestNode::start(vec![]).await;
    let mallory = certs::issue_client(node.cert_dir(), "mallory", Validity::days_from_now(1))
        .expect("client cert");
    let mut admin = node.admin().await;
    let mut m = node
        .client_as(&mallory, &node.certs.ca.cert)
        .await
        .expect("mallory connects (valid cert, no rights)");

    expect_status(
        m.create_stream(create("mine")).await,
        Code::PermissionDenied,
        "no ACL allows Create",
    );
    expect_status(
        m.put_acl(acl("mallory", "*", &[pb::Operation::ClusterAdmin], false))
            .await,
        Code::PermissionDenied,
        "msctl acl put",
    );
    let denied = AuditLog::read_all(&node.audit).expect("audit");
    let lines: Vec<_> = denied.iter().filter(|r| r.principal == "mallory").collect();
    assert_eq!(lines.len(), 2, "{denied:?}");
    assert!(lines.iter().all(|r| r.result.starts_with("denied: ")));
    assert_eq!(lines[0].action, "CreateStream");
    assert_eq!(lines[0].resource, "stream:mine");

    // Grant Create on m*; Deny wins over Allow for one name.
    admin
        .put_principal(pb::PutPrincipalRequest {
            name: "mallory".into(),
        })
        .await
        .expect("principal");
    admin
        .put_acl(acl("mallory", "m*", &[pb::Operation::Create], false))
        .await
        .expect("allow");
    admin
        .put_acl(acl("mallory", "mx", &[pb::Operation::Create], true))
        .await
        .expect("deny");
    m.create_stream(create("mine")).await.expect("allowed now");
    expect_status(
        m.create_stream(create("mx")).await,
        Code::PermissionDenied,
        "Deny ACL",
    );
    expect_status(
        m.create_stream(create("other")).await,
        Code::PermissionDenied,
        "no ACL allows",
    );
    expect_status(
        m.delete_stream(pb::DeleteStreamRequest {
            name: "mine".into(),
        })
        .await,
        Code::PermissionDenied,
        "Delete",
    );
    // Listing shows only what the caller may describe.
    admin.create_stream(create("secret")).await.expect("create");
    let seen = m
        .list_streams(pb::ListStreamsRequest {})
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = seen.streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mine"]);

    // msctl shows the refusal and exits 1.
    let out = node
        .msctl_as(&mallory, &["stream", "delete", "secret"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PermissionDenied"), "{err}");

    let audit = AuditLog::read_all(&node.audit).expect("audit");
    assert!(audit
        .iter()
        .any(|r| r.principal == "admin" && r.action == "PutAcl" && r.result == "ok"));
    assert!(audit.iter().any(|r| r.principal == "mallory"
        && r.resource == "stream:secret"
        && r.result.starts_with("denied")));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_are_answered_unauthenticated_and_audited() {
    let node = TestNode::start(vec![]).await;
    let dir = node.cert_dir().to_path_buf();

    // Expired, from our CA.
    let now = time::OffsetDateTime::now_utc();
    let expired = certs::issue_client(
        &dir,
        "expired",
        Validity {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        },
    )
    .expect("expired cert");
    // Valid, from another CA.
    let other = tempfile::tempdir().expect("dir");
    let foreign = certs::generate_dev(other.path()).expect("other CA");

    // The handshake succeeds (the client proves it holds the key); every call
    // on the connection is then refused with what to do, and audited.
    for (what, pair, want) in [
        ("expired", &expired, "it has expired"),
        (
            "wrong CA",
            &foreign.admin,
            "not signed by this cluster's CA",
        ),
    ] {
        let mut c = node
            .client_as(pair, &node.certs.ca.cert)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let err = c
            .list_streams(pb::ListStreamsRequest {})
            .await
            .expect_err("a refused certificate is never served");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains(want), "{what}: {}", err.message());
        let err = c
            .create_stream(pb::CreateStreamRequest {
                name: "sneaky".into(),
                partitions: 1,
                ..Default::default()
            })
            .await
            .expect_err("a refused certificate is never served");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{what}");
        let out = node.msctl_as(pair, &["stream", "list"]).await;
        assert_eq!(out.status.code(), Some(1), "{what}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{what}: {err}");
    }

    // No client certificate at all.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&node.certs.ca.cert).unwrap(),
        ))
        .domain_name(certs::NODE_TLS_NAME);
    let anon = tonic::transport::Endpoint::from_shared(format!("https://{}", node.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("connect without a client certificate");
    let err = pb::admin_client::AdminClient::new(anon.clone())
        .list_streams(pb::ListStreamsRequest {})
        .await
        .expect_err("a client without certificate is never served");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("no client certificate"),
        "{}",
        err.message()
    );
    // Nor may it speak Raft.
    let err = controlplane::pb::raft::raft_service_client::RaftServiceClient::new(anon)
        .vote(controlplane::pb::raft::RaftRequest {
            data: b"{}".to_vec(),
        })
        .await
        .expect_err("no Raft without a node certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let streams = node
        .admin()
        .await
        .list_streams(pb::ListStreamsRequest {})
        .await
        .expect("served")
        .into_inner()
        .streams;
    assert!(streams.iter().all(|s| s.name != "sneaky"), "{streams:?}");

    let audit = AuditLog::read_all(&node.audit).expect("audit");
    for want in [
        "it has expired",
        "not signed by this cluster's CA",
        "no client certificate",
    ] {
        assert!(
            audit.iter().any(|r| r.principal == "-"
                && r.result.starts_with("denied")
                && r.result.contains(want)),
            "no audit entry for {want:?}: {audit:?}"
        );
    }
    assert!(audit
        .iter()
        .any(|r| r.action == "CreateStream" && r.result.contains("it has expired")));

    // Malformed certificate files: msctl says what to pass.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk_pair = certs::CertPair {
        cert: junk.clone(),
        key: junk.clone(),
    };
    let out = node.msctl_as(&junk_pair, &["stream", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not PEM"), "{err}");

    // A PEM-armoured but corrupt certificate.
    let corrupt = dir.join("corrupt.pem");
    std::fs::write(
        &corrupt,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let corrupt_pair = certs::CertPair {
        cert: corrupt,
        key: node.certs.admin.key.clone(),
    };
    let out = node.msctl_as(&corrupt_pair, &["stream", "list"]).await;
    assert_eq!(out.status.code(), Some(1));

    // The node still serves a good client.
    let mut c = node.admin().await;
    c.list_streams(pb::ListStreamsRequest {})
        .await
        .expect("served");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msctl_prints_tables_and_json() {
    let node = TestNode::start(vec![]).await;
    let out = ok_stdout(
        &node
            .msctl(&[
                "stream",
                "create",
                "clicks",
                "--partitions",
                "3",
                "--mode",
                "lossy",
            ])
            .await,
    );
    assert!(out.contains("created stream clicks"), "{out}");
    let table = ok_stdout(&node.msctl(&["stream", "list"]).await);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    assert!(lines.next().unwrap().starts_with("clicks"), "{table}");

    let json: serde_json::Value = serde_json::from_str(&ok_stdout(
        &node
            .msctl(&["--json", "stream", "describe", "clicks"])
            .await,
    ))
    .expect("json");
    assert_eq!(json["partitions"], 3);
    assert_eq!(json["mode"], "lossy");
    assert_eq!(json["partitions_detail"].as_array().unwrap().len(), 3);
    assert_eq!(json["partitions_detail"][0]["leader"], 1);
    assert_eq!(json["ack_default"], "all_replicated");
    assert_eq!(json["min_insync_replicas"], 1);

    // #11: the replication policy is validated and shown; streams resolve by name; a
    // partition is described with its replicas (this one node has no data plane: no report).
    let out = node
        .msctl(&["stream", "create", "m", "--min-insync-replicas", "2"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("min_insync_replicas 2 out of range"), "{err}");
    let out = node
        .msctl(&["stream", "create", "m", "--acks", "acks=1"])
        .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown ack mode"));
    let out = ok_stdout(
        &node
            .msctl(&["stream", "create", "m", "--acks", "all_persisted"])
            .await,
    );
    assert!(out.contains("created stream m"), "{out}");
    let described = ok_stdout(&node.msctl(&["stream", "describe", "m"]).await);
    assert!(
        described.contains("acks all_persisted (all: every ISR member has it on disk)"),
        "{described}"
    );
    let resolved: serde_json::Value = serde_json::from_str(&ok_stdout(
        &node.msctl(&["--json", "stream", "resolve", "clicks"]).await,
    ))
    .unwrap();
    assert_eq!(resolved["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(resolved["partitions"][2]["leader"], 1);
    assert_eq!(resolved["partitions"][2]["leader_epoch"], 1);
    let part: serde_json::Value = serde_json::from_str(&ok_stdout(
        &node
            .msctl(&["--json", "partition", "describe", "clicks", "2"])
            .await,
    ))
    .unwrap();
    assert_eq!(part["leader"], 1);
    assert_eq!(part["replicas"][0]["state"], "no report");
    assert_eq!(part["under_replicated"], false);
    let out = node.msctl(&["partition", "describe", "clicks", "3"]).await;
    assert_eq!(out.status.code(), Some(1));
    let out = ok_stdout(&node.msctl(&["stream", "unclean-election", "m", "on"]).await);
    assert!(out.contains("acknowledged records may be lost"), "{out}");

    ok_stdout(&node.msctl(&["principal", "create", "bob"]).await);
    ok_stdout(
        &node
            .msctl(&[
                "acl",
                "put",
                "--principal",
                "bob",
                "--resource",
                "cl*",
                "--op",
                "write",
                "--op",
                "read",
                "--source",
                "198.18.0.2/32",
            ])
            .await,
    );
    let acls: serde_json::Value =
        serde_json::from_str(&ok_stdout(&node.msctl(&["--json", "acl", "list"]).await)).unwrap();
    assert_eq!(acls[0]["principal"], "bob");
    assert_eq!(acls[0]["sources"][0], "198.18.0.2/32");
    assert_eq!(acls[0]["operations"], serde_json::json!(["read", "write"]));

    let status: serde_json::Value = serde_json::from_str(&ok_stdout(
        &node.msctl(&["--json", "cluster", "status"]).await,
    ))
    .unwrap();
    assert_eq!(status["leader"], 1);
    assert_eq!(status["role"], "leader");
    assert!(status["commit_index"].as_u64().unwrap() >= 1);
    assert_eq!(status["members"][0]["lag"], 0);
    let nodes = ok_stdout(&node.msctl(&["node", "list"]).await);
    assert!(nodes.lines().nth(1).unwrap().contains("voter"), "{nodes}");

    // Unknown stream: exit 1, and --json still prints one JSON object.
    let out = node.msctl(&["--json", "stream", "delete", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert_eq!(err["ok"], false);
    assert!(err["error"].as_str().unwrap().contains("NotFound"));
    // Leadership transfer to the leader itself is a no-op.
    let out = ok_stdout(&node.msctl(&["leader", "transfer", "--to", "1"]).await);
    assert!(out.contains("node 1 leads"), "{out}");
    node.stop().await;
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_metrics_health_and_ready() {
    let node = TestNode::start(vec![]).await;
    let mut c = node.admin().await;
    c.create_stream(create("m1")).await.expect("create");
    let addr = node.http;
    let (health, metrics, ready) = tokio::task::spawn_blocking(move || {
        (
            http_get(addr, "/health"),
            http_get(addr, "/metrics"),
            http_get(addr, "/ready"),
        )
    })
    .await
    .unwrap();
    assert_eq!(health.0, 200);
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(metrics.0, 200);
    let body = metrics.1;
    for series in [
        "ms_cp_term ",
        "ms_cp_leader 1",
        "ms_cp_is_leader 1",
        "ms_cp_commit_index ",
        "ms_cp_applied_index ",
        "ms_cp_apply_latency_seconds_count 1",
        "ms_cp_policy_push_seconds_count",
        "ms_cp_admin_requests_total 1",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(series)),
            "{series} missing:\n{body}"
        );
    }
    node.stop().await;
}
