//! The bridge server through real gRPC on loopback: token check, sessions,
//! variables, constraints, quotas, watch streams (initial values, changes,
//! heartbeats, session end, overflow, cancellation, a load test), Elixir
//! tools, and the standalone `snakepit-bridge` binary.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use snakepit_core::auth::{generate_token, TOKEN_ENV_VAR};
use snakepit_core::bridge::{
    connect_bridge, error_reason, serve, BridgeClient, BridgeConfig, BridgeServer, NoPools,
    NoTools, ToolCall, ToolHost,
};
use snakepit_core::proto::bridge_service_client::BridgeServiceClient;
use snakepit_core::proto::{
    execute_tool_response::Outcome, CreateSessionRequest, ExecuteToolRequest, ExecuteToolResponse,
    GetVariableRequest, GetVariablesRequest, GetVersionRequest, ListElixirToolsRequest,
    ListSessionsRequest, ListVariablesRequest, Payload, PayloadKind, RegisterVariableRequest,
    SessionRequest, SetVariableRequest, SetVariablesRequest, ToolError, ToolSpec, Variable,
    VariableUpdate, VariableWrite, WatchVariablesRequest,
};
use snakepit_core::session::{Store, StoreConfig};
use snakepit_core::CoreError;
use tonic::{Code, Status, Streaming};

/// A running bridge with its store, for one test.
struct Node {
    server: BridgeServer,
    store: Arc<Store>,
    token: String,
}

impl Node {
    async fn start() -> Node {
        Node::start_with(StoreConfig::default(), Arc::new(NoTools), |_| {}).await
    }

    async fn start_with(
        store_config: StoreConfig,
        tools: Arc<dyn ToolHost>,
        configure: impl FnOnce(&mut BridgeConfig),
    ) -> Node {
        let token = generate_token();
        let mut config = BridgeConfig::new(token.clone());
        configure(&mut config);
        let store = Store::new(store_config);
        let server = serve(config, store.clone(), tools, Arc::new(NoPools))
            .await
            .expect("serve");
        Node {
            server,
            store,
            token,
        }
    }

    fn address(&self) -> String {
        self.server.address().to_string()
    }

    async fn client(&self) -> BridgeClient {
        connect_bridge(&self.address(), &self.token)
            .await
            .expect("connect")
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn value_of(variable: &Variable) -> Value {
    serde_json::from_slice(&variable.value_json).unwrap()
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The status' code and `x-snakepit-error` reason.
fn code_and_reason(status: &Status) -> (Code, Option<&str>) {
    (status.code(), error_reason(status))
}

async fn create_session(client: &mut BridgeClient, id: &str) {
    client
        .create_session(CreateSessionRequest {
            session_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn register(
    client: &mut BridgeClient,
    session: &str,
    name: &str,
    var_type: &str,
    value: Value,
    constraints: Value,
) -> Result<Variable, Status> {
    let constraints_json = if constraints.is_null() {
        Vec::new()
    } else {
        json_bytes(&constraints)
    };
    client
        .register_variable(RegisterVariableRequest {
            session_id: session.into(),
            name: name.into(),
            r#type: var_type.into(),
            value_json: json_bytes(&value),
            constraints_json,
            metadata: HashMap::from([("owner".into(), "test".into())]),
            source: "python".into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn write(identifier: &str, value: Value) -> VariableWrite {
    VariableWrite {
        identifier: identifier.into(),
        value_json: json_bytes(&value),
        expected_version: None,
        metadata: HashMap::new(),
    }
}

async fn set(
    client: &mut BridgeClient,
    session: &str,
    write: VariableWrite,
) -> Result<Variable, Status> {
    client
        .set_variable(SetVariableRequest {
            session_id: session.into(),
            write: Some(write),
            source: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(client: &mut BridgeClient, session: &str, identifier: &str) -> Variable {
    client
        .get_variable(GetVariableRequest {
            session_id: session.into(),
            identifier: identifier.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn watch(
    client: &mut BridgeClient,
    session: &str,
    identifiers: &[&str],
    include_initial_values: bool,
    max_buffered: u32,
) -> Result<Streaming<VariableUpdate>, Status> {
    client
        .watch_variables(WatchVariablesRequest {
            session_id: session.into(),
            variable_identifiers: identifiers.iter().map(|s| s.to_string()).collect(),
            include_initial_values,
            heartbeat_interval_ms: 0,
            max_buffered,
        })
        .await
        .map(|r| r.into_inner())
}

/// The next message of a watch stream that is not a heartbeat.
async fn next_update(stream: &mut Streaming<VariableUpdate>) -> Result<VariableUpdate, Status> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an update within 10 s")?
            .expect("the stream goes on");
        if next.update_type != "heartbeat" {
            return Ok(next);
        }
    }
}

/// Polls `check` every few milliseconds until it holds, for at most 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn refuses_requests_without_the_right_token() {
    let node = Node::start().await;
    let endpoint = format!("http://{}", node.address());
    let mut anonymous = BridgeServiceClient::connect(endpoint).await.unwrap();
    let mut wrong = connect_bridge(&node.address(), &generate_token())
        .await
        .unwrap();

    let status = anonymous
        .get_version(GetVersionRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        anonymous
            .create_session(CreateSessionRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    assert_eq!(
        wrong
            .get_version(GetVersionRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        wrong
            .list_sessions(ListSessionsRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        wrong
            .watch_variables(WatchVariablesRequest {
                session_id: "s".into(),
                variable_identifiers: vec!["x".into()],
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // Nothing was created by the refused calls.
    assert!(node.store.list_sessions().is_empty());

    let version = node
        .client()
        .await
        .get_version(GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.protocol_version, "1");
    assert_eq!(version.bridge_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn refuses_to_listen_beyond_loopback() {
    let mut config = BridgeConfig::new(generate_token());
    config.address = "0.0.0.0:0".parse().unwrap();
    let store = Store::new(StoreConfig::default());
    match serve(config, store, Arc::new(NoTools), Arc::new(NoPools)).await {
        Err(error @ CoreError::Bridge { .. }) => {
            assert!(
                error
                    .to_string()
                    .contains("non-loopback address without TLS"),
                "{error}"
            )
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("served on 0.0.0.0"),
    }
}

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1,
/// made with the `openssl` command: `(ca_pem, cert_pem, key_pem)`.
fn certificates() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-tls-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        path("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    let (ca_key, ca) = (path("ca.key"), path("ca.pem"));
    let (key, csr, cert, ext) = (
        path("key.pem"),
        path("req.csr"),
        path("cert.pem"),
        path("ext.cnf"),
    );
    openssl(
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ]
        .into_iter()
        .chain([
            "-subj",
            "/CN=snakepit-test-ca",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ]
        .into_iter()
        .chain(["-keyout", &key, "-out", &csr])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
        ]
        .into_iter()
        .chain(["-days", "1", "-extfile", &ext, "-out", &cert])
        .collect::<Vec<_>>(),
    );
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let pems = (read("ca.pem"), read("cert.pem"), read("key.pem"));
    std::fs::remove_dir_all(&dir).unwrap();
    pems
}

#[tokio::test]
async fn beyond_loopback_the_bridge_serves_tls_only() {
    let (ca_pem, cert_pem, key_pem) = certificates();
    let token = generate_token();
    let mut config = BridgeConfig::new(token.clone());
    config.address = "0.0.0.0:0".parse().unwrap();
    config.tls = Some(snakepit_core::bridge::TlsIdentity { cert_pem, key_pem });
    let store = Store::new(StoreConfig::default());
    let server = serve(config, store, Arc::new(NoTools), Arc::new(NoPools))
        .await
        .expect("serves with TLS");
    let address = format!("127.0.0.1:{}", server.address().port());

    let tls = Some((ca_pem, "localhost".to_owned()));
    let mut client = snakepit_core::bridge::connect_bridge_tls(&address, &token, tls)
        .await
        .expect("a TLS client connects");
    let version = client.get_version(GetVersionRequest {}).await.unwrap();
    assert_eq!(version.into_inner().protocol_version, "1");

    // Plain HTTP/2 gets nowhere.
    let plain = match connect_bridge(&address, &token).await {
        Ok(mut client) => client.get_version(GetVersionRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(plain, "a plaintext client was served");
    // A client that does not trust the certificate is refused.
    let (other_ca, _, _) = certificates();
    let untrusted = match snakepit_core::bridge::connect_bridge_tls(
        &address,
        &token,
        Some((other_ca, "localhost".into())),
    )
    .await
    {
        Ok(mut client) => client.get_version(GetVersionRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(untrusted, "a client trusting another CA was served");
}

#[tokio::test]
async fn sessions_are_created_read_renewed_listed_and_deleted() {
    let node = Node::start().await;
    let mut client = node.client().await;

    let created = client
        .create_session(CreateSessionRequest {
            session_id: "b".into(),
            ttl_seconds: 60,
            metadata: HashMap::from([("user".into(), "ada".into())]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.session_id, "b");
    assert_eq!(created.ttl_seconds, 60);
    assert_eq!(created.metadata["user"], "ada");
    assert_eq!(created.variable_count, 0);
    assert_eq!(created.watcher_count, 0);
    assert!((created.created_at_us - now_us()).abs() < 5_000_000);
    assert_eq!(created.expires_at_us, created.last_used_at_us + 60_000_000);

    // Idempotent: the same session, its metadata kept, its ttl renewed.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let again = client
        .create_session(CreateSessionRequest {
            session_id: "b".into(),
            ttl_seconds: 60,
            metadata: HashMap::from([("user".into(), "bob".into())]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.created_at_us, created.created_at_us);
    assert_eq!(again.metadata["user"], "ada");
    assert!(again.last_used_at_us > created.last_used_at_us);

    let generated = client
        .create_session(CreateSessionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!generated.session_id.is_empty());
    assert_eq!(generated.ttl_seconds, 3600);

    let got = client
        .get_session(SessionRequest {
            session_id: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.last_used_at_us >= again.last_used_at_us);
    tokio::time::sleep(Duration::from_millis(2)).await;
    let touched = client
        .touch_session(SessionRequest {
            session_id: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(touched.last_used_at_us > got.last_used_at_us);
    assert!(touched.expires_at_us > got.expires_at_us);

    let listed: Vec<String> = client
        .list_sessions(ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    let mut expected = vec!["b".to_string(), generated.session_id.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    let deleted = client
        .delete_session(SessionRequest {
            session_id: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.existed);
    let deleted_again = client
        .delete_session(SessionRequest {
            session_id: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!deleted_again.existed);
    let missing = client
        .get_session(SessionRequest {
            session_id: "b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&missing),
        (Code::NotFound, Some("session_not_found"))
    );
    let missing = client
        .touch_session(SessionRequest {
            session_id: "b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&missing),
        (Code::NotFound, Some("session_not_found"))
    );
}

#[tokio::test]
async fn variables_are_registered_read_written_listed_and_deleted() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;

    let temperature = register(
        &mut client,
        "s",
        "temperature",
        "float",
        json!(0.5),
        json!({"min": 0, "max": 2}),
    )
    .await
    .unwrap();
    assert!(!temperature.id.is_empty());
    assert_eq!(temperature.name, "temperature");
    assert_eq!(temperature.r#type, "float");
    assert_eq!(value_of(&temperature), json!(0.5));
    assert_eq!(
        serde_json::from_slice::<Value>(&temperature.constraints_json).unwrap(),
        json!({"min": 0, "max": 2})
    );
    assert_eq!(temperature.metadata["owner"], "test");
    assert_eq!(temperature.version, 1);
    assert_eq!(temperature.source, "python");
    assert!(temperature.created_at_us > 0);

    let tokens = register(
        &mut client,
        "s",
        "max_tokens",
        "integer",
        json!(10),
        Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&tokens.constraints_json).unwrap(),
        json!({})
    );
    register(
        &mut client,
        "s",
        "model",
        "string",
        json!("small"),
        Value::Null,
    )
    .await
    .unwrap();

    let taken = register(&mut client, "s", "model", "string", json!("x"), Value::Null)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&taken),
        (Code::AlreadyExists, Some("variable_exists"))
    );
    let no_session = register(&mut client, "nope", "x", "json", json!(1), Value::Null)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&no_session),
        (Code::NotFound, Some("session_not_found"))
    );
    let bad_type = register(&mut client, "s", "y", "complex", json!(1), Value::Null)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&bad_type),
        (Code::InvalidArgument, Some("invalid_type"))
    );

    // By name and by id.
    assert_eq!(get(&mut client, "s", "temperature").await, temperature);
    assert_eq!(get(&mut client, "s", &temperature.id).await, temperature);
    let missing = client
        .get_variable(GetVariableRequest {
            session_id: "s".into(),
            identifier: "nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&missing),
        (Code::NotFound, Some("variable_not_found"))
    );

    let many = client
        .get_variables(GetVariablesRequest {
            session_id: "s".into(),
            identifiers: vec![
                "model".into(),
                "ghost".into(),
                temperature.id.clone(),
                "phantom".into(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = many.variables.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["model", "temperature"]);
    assert_eq!(many.missing, ["ghost", "phantom"]);

    let mut change = write("temperature", json!(1.5));
    change.metadata.insert("reason".into(), "tuning".into());
    let written = client
        .set_variable(SetVariableRequest {
            session_id: "s".into(),
            write: Some(change),
            source: "elixir".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(value_of(&written), json!(1.5));
    assert_eq!(written.version, 2);
    assert_eq!(written.source, "elixir");
    assert_eq!(written.update_metadata["reason"], "tuning");
    assert_eq!(written.metadata["owner"], "test");
    assert!(written.updated_at_us >= temperature.updated_at_us);
    assert_eq!(written.created_at_us, temperature.created_at_us);
    assert_eq!(get(&mut client, "s", "temperature").await, written);

    let listed = client
        .list_variables(ListVariablesRequest {
            session_id: "s".into(),
            pattern: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.variables.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["max_tokens", "model", "temperature"]);
    let listed = client
        .list_variables(ListVariablesRequest {
            session_id: "s".into(),
            pattern: "m*".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.variables.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["max_tokens", "model"]);

    let info = client
        .get_session(SessionRequest {
            session_id: "s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.variable_count, 3);

    client
        .delete_variable(snakepit_core::proto::DeleteVariableRequest {
            session_id: "s".into(),
            identifier: "model".into(),
            source: String::new(),
        })
        .await
        .unwrap();
    let gone = client
        .delete_variable(snakepit_core::proto::DeleteVariableRequest {
            session_id: "s".into(),
            identifier: "model".into(),
            source: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&gone),
        (Code::NotFound, Some("variable_not_found"))
    );
    let info = client
        .get_session(SessionRequest {
            session_id: "s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.variable_count, 2);
}

#[tokio::test]
async fn a_write_at_the_wrong_version_changes_nothing() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    register(&mut client, "s", "n", "integer", json!(1), Value::Null)
        .await
        .unwrap();

    let mut at_one = write("n", json!(2));
    at_one.expected_version = Some(1);
    assert_eq!(set(&mut client, "s", at_one).await.unwrap().version, 2);

    let mut stale = write("n", json!(3));
    stale.expected_version = Some(1);
    let conflict = set(&mut client, "s", stale).await.unwrap_err();
    assert_eq!(
        code_and_reason(&conflict),
        (Code::Aborted, Some("version_conflict"))
    );
    let current = get(&mut client, "s", "n").await;
    assert_eq!(current.version, 2);
    assert_eq!(value_of(&current), json!(2));
}

#[tokio::test]
async fn set_variables_applies_all_writes_or_none() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    register(
        &mut client,
        "s",
        "a",
        "integer",
        json!(0),
        json!({"max": 10}),
    )
    .await
    .unwrap();
    register(&mut client, "s", "b", "string", json!("x"), Value::Null)
        .await
        .unwrap();

    let set_many = |writes: Vec<VariableWrite>| SetVariablesRequest {
        session_id: "s".into(),
        writes,
        source: "python".into(),
    };

    // The second write breaks a constraint: the first is not applied either.
    let refused = client
        .set_variables(set_many(vec![
            write("b", json!("y")),
            write("a", json!(11)),
        ]))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::InvalidArgument, Some("invalid_value"))
    );
    // A write that is not even JSON is refused before the store sees it.
    let mut broken = write("a", json!(1));
    broken.value_json = b"{oops".to_vec();
    let refused = client
        .set_variables(set_many(vec![write("b", json!("y")), broken]))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::InvalidArgument, Some("invalid_argument"))
    );
    assert!(
        refused.message().contains("writes[1].value_json"),
        "{refused:?}"
    );
    // So is one naming a variable that does not exist.
    let refused = client
        .set_variables(set_many(vec![write("b", json!("y")), write("c", json!(1))]))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::NotFound, Some("variable_not_found"))
    );
    assert_eq!(value_of(&get(&mut client, "s", "b").await), json!("x"));
    assert_eq!(get(&mut client, "s", "b").await.version, 1);
    assert_eq!(get(&mut client, "s", "a").await.version, 1);

    let applied = client
        .set_variables(set_many(vec![write("b", json!("y")), write("a", json!(7))]))
        .await
        .unwrap()
        .into_inner();
    let after: Vec<(&str, Value, u64)> = applied
        .variables
        .iter()
        .map(|v| (v.name.as_str(), value_of(v), v.version))
        .collect();
    assert_eq!(after, [("b", json!("y"), 2), ("a", json!(7), 2)]);
    assert!(applied.variables.iter().all(|v| v.source == "python"));
}

#[tokio::test]
async fn values_that_break_their_constraints_are_invalid_values() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    // (type, constraints, a good value, a bad one)
    let cases = [
        ("float", json!({"min": 0, "max": 1}), json!(0.5), json!(1.5)),
        ("integer", json!({"min": 0, "max": 10}), json!(3), json!(11)),
        ("integer", json!({}), json!(3), json!(2.5)),
        (
            "string",
            json!({"max_length": 3}),
            json!("abc"),
            json!("abcd"),
        ),
        (
            "string",
            json!({"choices": ["a", "b"]}),
            json!("a"),
            json!("c"),
        ),
        ("boolean", json!({}), json!(true), json!("yes")),
        (
            "choice",
            json!({"choices": ["x", "y"]}),
            json!("x"),
            json!("z"),
        ),
        (
            "module",
            json!({"choices": ["m.a"]}),
            json!("m.a"),
            json!("m.b"),
        ),
        (
            "embedding",
            json!({"dimensions": 3}),
            json!([1, 2, 3]),
            json!([1, 2]),
        ),
        (
            "tensor",
            json!({"shape": [2]}),
            json!({"shape": [2], "data": [1, 2]}),
            json!({"shape": [3], "data": [1, 2, 3]}),
        ),
    ];
    for (i, (var_type, constraints, good, bad)) in cases.into_iter().enumerate() {
        let name = format!("v{i}_{var_type}");
        let refused = register(
            &mut client,
            "s",
            &name,
            var_type,
            bad.clone(),
            constraints.clone(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            code_and_reason(&refused),
            (Code::InvalidArgument, Some("invalid_value")),
            "{var_type} registered with {bad}"
        );
        register(&mut client, "s", &name, var_type, good.clone(), constraints)
            .await
            .unwrap_or_else(|e| panic!("{var_type} with {good}: {e:?}"));
        let refused = set(&mut client, "s", write(&name, bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            code_and_reason(&refused),
            (Code::InvalidArgument, Some("invalid_value")),
            "{var_type} set to {bad}"
        );
        assert_eq!(get(&mut client, "s", &name).await.version, 1, "{var_type}");
    }

    let unknown_key = register(&mut client, "s", "j", "json", json!(1), json!({"min": 1}))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&unknown_key),
        (Code::InvalidArgument, Some("invalid_constraints"))
    );
    let choice_without_choices = register(&mut client, "s", "c", "choice", json!("a"), json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&choice_without_choices),
        (Code::InvalidArgument, Some("invalid_constraints"))
    );
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    register(&mut client, "s", "x", "json", json!(1), Value::Null)
        .await
        .unwrap();

    let mut request = RegisterVariableRequest {
        session_id: "s".into(),
        name: "y".into(),
        r#type: "json".into(),
        value_json: b"not json".to_vec(),
        ..Default::default()
    };
    let status = client.register_variable(request.clone()).await.unwrap_err();
    assert_eq!(
        code_and_reason(&status),
        (Code::InvalidArgument, Some("invalid_argument"))
    );
    assert!(status.message().contains("value_json"), "{status:?}");
    request.value_json = b"1".to_vec();
    request.constraints_json = b"{".to_vec();
    let status = client.register_variable(request.clone()).await.unwrap_err();
    assert!(status.message().contains("constraints_json"), "{status:?}");
    request.constraints_json = Vec::new();
    request.source = "ruby".into();
    let status = client.register_variable(request).await.unwrap_err();
    assert_eq!(
        code_and_reason(&status),
        (Code::InvalidArgument, Some("invalid_argument"))
    );

    let status = client
        .set_variable(SetVariableRequest {
            session_id: "s".into(),
            write: None,
            source: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&status),
        (Code::InvalidArgument, Some("invalid_argument"))
    );
    let mut empty = write("x", json!(1));
    empty.value_json.clear();
    let status = set(&mut client, "s", empty).await.unwrap_err();
    assert!(status.message().contains("write.value_json"), "{status:?}");

    for identifiers in [&[][..], &["x", ""][..]] {
        let status = watch(&mut client, "s", identifiers, false, 0)
            .await
            .unwrap_err();
        assert_eq!(
            code_and_reason(&status),
            (Code::InvalidArgument, Some("invalid_argument")),
            "{identifiers:?}"
        );
    }
    assert_eq!(get(&mut client, "s", "x").await.version, 1);
}

#[tokio::test]
async fn quotas_are_resource_exhausted() {
    let store_config = StoreConfig {
        max_sessions: 2,
        max_variables_per_session: 2,
        ..StoreConfig::default()
    };
    let node = Node::start_with(store_config, Arc::new(NoTools), |_| {}).await;
    let mut client = node.client().await;
    create_session(&mut client, "one").await;
    create_session(&mut client, "two").await;
    let refused = client
        .create_session(CreateSessionRequest {
            session_id: "three".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::ResourceExhausted, Some("session_quota_exceeded"))
    );
    // An existing session is still returned.
    create_session(&mut client, "two").await;

    register(&mut client, "one", "a", "json", json!(1), Value::Null)
        .await
        .unwrap();
    register(&mut client, "one", "b", "json", json!(2), Value::Null)
        .await
        .unwrap();
    let refused = register(&mut client, "one", "c", "json", json!(3), Value::Null)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&refused),
        (Code::ResourceExhausted, Some("variable_quota_exceeded"))
    );
    register(&mut client, "two", "c", "json", json!(3), Value::Null)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_watch_sends_initial_values_then_every_change() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    let a = register(&mut client, "s", "a", "integer", json!(1), Value::Null)
        .await
        .unwrap();
    let b = register(&mut client, "s", "b", "string", json!("x"), Value::Null)
        .await
        .unwrap();
    register(
        &mut client,
        "s",
        "unwatched",
        "integer",
        json!(0),
        Value::Null,
    )
    .await
    .unwrap();

    // `b` by id, `a` by name.
    let mut stream = watch(&mut client, "s", &[&b.id, "a"], true, 0)
        .await
        .unwrap();
    let first = next_update(&mut stream).await.unwrap();
    assert_eq!(first.update_type, "initial_value");
    assert_eq!(first.variable_id, b.id);
    assert_eq!(first.version, 1);
    assert_eq!(first.variable.as_ref().unwrap(), &b);
    assert!(first.old_value_json.is_empty());
    let second = next_update(&mut stream).await.unwrap();
    assert_eq!(second.update_type, "initial_value");
    assert_eq!(second.variable_id, a.id);
    assert_eq!(second.update_source, "python");

    let info = client
        .get_session(SessionRequest {
            session_id: "s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.watcher_count, 1);

    let mut change = write("a", json!(2));
    change.metadata.insert("step".into(), "1".into());
    client
        .set_variable(SetVariableRequest {
            session_id: "s".into(),
            write: Some(change),
            source: "elixir".into(),
        })
        .await
        .unwrap();
    set(&mut client, "s", write("unwatched", json!(5)))
        .await
        .unwrap();
    set(&mut client, "s", write("b", json!("y"))).await.unwrap();

    let update = next_update(&mut stream).await.unwrap();
    assert_eq!(update.update_type, "value_change");
    assert_eq!(update.variable_id, a.id);
    assert_eq!(update.version, 2);
    assert_eq!(
        serde_json::from_slice::<Value>(&update.old_value_json).unwrap(),
        json!(1)
    );
    assert_eq!(value_of(update.variable.as_ref().unwrap()), json!(2));
    assert_eq!(update.update_source, "elixir");
    assert_eq!(update.update_metadata["step"], "1");
    assert!((update.timestamp_us - now_us()).abs() < 5_000_000);
    assert_eq!(update.timestamp_us, update.variable.unwrap().updated_at_us);

    let update = next_update(&mut stream).await.unwrap();
    assert_eq!(update.variable_id, b.id);
    assert_eq!(update.update_source, "client");
    assert_eq!(
        serde_json::from_slice::<Value>(&update.old_value_json).unwrap(),
        json!("x")
    );

    client
        .delete_variable(snakepit_core::proto::DeleteVariableRequest {
            session_id: "s".into(),
            identifier: "a".into(),
            source: "python".into(),
        })
        .await
        .unwrap();
    let update = next_update(&mut stream).await.unwrap();
    assert_eq!(update.update_type, "deleted");
    assert_eq!(update.variable_id, a.id);
    assert!(update.old_value_json.is_empty());

    // Watched by name: a variable registered again under it is followed.
    let a2 = register(&mut client, "s", "a", "integer", json!(10), Value::Null)
        .await
        .unwrap();
    assert_ne!(a2.id, a.id);
    let update = next_update(&mut stream).await.unwrap();
    assert_eq!(update.update_type, "value_change");
    assert_eq!(update.variable_id, a2.id);
    assert_eq!(update.version, 1);
    assert!(update.old_value_json.is_empty());
    set(&mut client, "s", write("a", json!(11))).await.unwrap();
    let update = next_update(&mut stream).await.unwrap();
    assert_eq!(update.variable_id, a2.id);
    assert_eq!(update.version, 2);

    let missing = watch(&mut client, "s", &["a", "nothing"], false, 0)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&missing),
        (Code::NotFound, Some("variable_not_found"))
    );
    let missing = watch(&mut client, "nope", &["a"], false, 0)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&missing),
        (Code::NotFound, Some("session_not_found"))
    );
}

#[tokio::test]
async fn a_quiet_watch_gets_heartbeats() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    register(&mut client, "s", "a", "integer", json!(1), Value::Null)
        .await
        .unwrap();
    let started = Instant::now();
    let mut stream = client
        .watch_variables(WatchVariablesRequest {
            session_id: "s".into(),
            variable_identifiers: vec!["a".into()],
            include_initial_values: true,
            heartbeat_interval_ms: 50,
            max_buffered: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let initial = stream.message().await.unwrap().unwrap();
    assert_eq!(initial.update_type, "initial_value");
    for _ in 0..3 {
        let beat = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a heartbeat")
            .unwrap()
            .unwrap();
        assert_eq!(beat.update_type, "heartbeat");
        assert!(beat.variable.is_none());
        assert!(beat.variable_id.is_empty());
        assert_eq!(beat.version, 0);
        assert!((beat.timestamp_us - now_us()).abs() < 5_000_000);
    }
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn a_deleted_session_ends_its_watches() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    register(&mut client, "s", "a", "integer", json!(1), Value::Null)
        .await
        .unwrap();
    let mut stream = watch(&mut client, "s", &["a"], false, 0).await.unwrap();
    set(&mut client, "s", write("a", json!(2))).await.unwrap();
    client
        .delete_session(SessionRequest {
            session_id: "s".into(),
        })
        .await
        .unwrap();
    // The change made before the deletion still arrives, then the end.
    assert_eq!(next_update(&mut stream).await.unwrap().version, 2);
    let end = next_update(&mut stream).await.unwrap_err();
    assert_eq!(
        code_and_reason(&end),
        (Code::NotFound, Some("session_ended"))
    );
    assert_eq!(end.message(), "session s was deleted");
}

#[tokio::test]
async fn an_expired_session_ends_its_watches() {
    let node = Node::start_with(StoreConfig::default(), Arc::new(NoTools), |config| {
        config.reap_interval = Duration::from_millis(20);
    })
    .await;
    let mut client = node.client().await;
    client
        .create_session(CreateSessionRequest {
            session_id: "brief".into(),
            ttl_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    register(&mut client, "brief", "a", "integer", json!(1), Value::Null)
        .await
        .unwrap();
    let mut stream = watch(&mut client, "brief", &["a"], false, 0).await.unwrap();
    let end = next_update(&mut stream).await.unwrap_err();
    assert_eq!(
        code_and_reason(&end),
        (Code::NotFound, Some("session_ended"))
    );
    assert_eq!(end.message(), "session brief expired");
    assert!(node.store.list_sessions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_overflows_and_never_blocks_writers() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    // Large values fill the transport's windows and buffers sooner.
    let big = |n: i64| json!(format!("{n}:{}", "x".repeat(4096)));
    register(&mut client, "s", "n", "string", big(0), Value::Null)
        .await
        .unwrap();
    let mut stream = watch(&mut client, "s", &["n"], false, 8).await.unwrap();

    // Far more writes than the watch buffer, the stream channel and the
    // HTTP/2 windows hold together; none of them may wait for the watcher.
    // Until the watch overflows, writes come in bursts smaller than its
    // buffer with pauses between, so the server pushes all it can towards
    // the client: the overflow comes from the client not reading, not from
    // the store outpacing the server. Then the rest at full speed.
    const WRITES: i64 = 5_000;
    let write_directly = |value: i64| {
        node.store
            .set_variable(
                "s",
                snakepit_core::session::VariableWrite {
                    identifier: "n".into(),
                    value: big(value),
                    expected_version: None,
                    metadata: HashMap::new(),
                },
                snakepit_core::session::Source::Elixir,
            )
            .unwrap()
    };
    let started = Instant::now();
    let mut overflowed_after = None;
    for value in 1..=WRITES {
        write_directly(value);
        if overflowed_after.is_none() && value % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if node.store.touch_session("s").unwrap().watcher_count == 0 {
                overflowed_after = Some(value);
            }
        }
    }
    let writing = started.elapsed();
    // A few through gRPC too, while the watcher is still not reading.
    for value in WRITES + 1..=WRITES + 10 {
        set(&mut client, "s", write("n", big(value))).await.unwrap();
    }
    assert!(
        writing < Duration::from_secs(10),
        "{WRITES} writes took {writing:?}"
    );
    assert!(overflowed_after.is_some(), "the watch did not overflow");

    let mut versions = Vec::new();
    let end = loop {
        match next_update(&mut stream).await {
            Ok(update) => versions.push(update.version),
            Err(status) => break status,
        }
    };
    assert_eq!(
        code_and_reason(&end),
        (Code::ResourceExhausted, Some("watch_overflow"))
    );
    // What was buffered arrives first, in order, with nothing skipped.
    assert!(versions.len() >= 8, "{} updates", versions.len());
    assert!((versions.len() as i64) < WRITES);
    let expected: Vec<u64> = (2..2 + versions.len() as u64).collect();
    assert_eq!(versions, expected);
    eprintln!(
        "overflow: {WRITES} store writes in {writing:?}; the watch overflowed after \
         {overflowed_after:?} writes and delivered {} updates before watch_overflow",
        versions.len()
    );

    let mut client = client.clone();
    eventually("the overflowed watcher to be gone", || {
        let mut client = client.clone();
        async move {
            let info = client
                .get_session(SessionRequest {
                    session_id: "s".into(),
                })
                .await
                .unwrap()
                .into_inner();
            info.watcher_count == 0
        }
    })
    .await;
    assert_eq!(get(&mut client, "s", "n").await.version, WRITES as u64 + 11);
}

#[tokio::test]
async fn dropping_the_stream_removes_the_watcher() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    register(&mut client, "s", "a", "integer", json!(1), Value::Null)
        .await
        .unwrap();
    let watcher_count = |client: &BridgeClient| {
        let mut client = client.clone();
        async move {
            client
                .get_session(SessionRequest {
                    session_id: "s".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .watcher_count
        }
    };

    let mut first = watch(&mut client, "s", &["a"], true, 0).await.unwrap();
    let second = watch(&mut client, "s", &["a"], false, 0).await.unwrap();
    assert_eq!(
        next_update(&mut first).await.unwrap().update_type,
        "initial_value"
    );
    assert_eq!(watcher_count(&client).await, 2);

    let (counter, shared) = (&watcher_count, &client);
    drop(second);
    eventually(
        "one watcher left",
        || async move { counter(shared).await == 1 },
    )
    .await;
    drop(first);
    eventually(
        "no watcher left",
        || async move { counter(shared).await == 0 },
    )
    .await;
    // Writes go on as usual.
    assert_eq!(
        set(&mut client, "s", write("a", json!(2)))
            .await
            .unwrap()
            .version,
        2
    );
}

/// Echoes its arguments, reports the timeout it was given, and sleeps for
/// `sleep_ms` when asked.
struct EchoTools;

impl ToolHost for EchoTools {
    fn list(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "echo".into(),
            description: "Returns its arguments".into(),
            ..Default::default()
        }]
    }

    fn call(&self, request: ExecuteToolRequest, timeout: Option<Duration>) -> ToolCall {
        Box::pin(async move {
            match request.tool_name.as_str() {
                "echo" => {}
                "fail" => {
                    return Ok(ExecuteToolResponse {
                        outcome: Some(Outcome::Error(ToolError {
                            category: "elixir".into(),
                            message: "it broke".into(),
                            ..Default::default()
                        })),
                        metadata: HashMap::new(),
                    })
                }
                other => return Err(snakepit_core::bridge::tool_not_found(other)),
            }
            let arguments: Value = serde_json::from_slice(&request.arguments_json).unwrap();
            if let Some(ms) = arguments["sleep_ms"].as_u64() {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut metadata = HashMap::from([("session".into(), request.session_id)]);
            if let Some(timeout) = timeout {
                metadata.insert("timeout_ms".into(), timeout.as_millis().to_string());
            }
            Ok(ExecuteToolResponse {
                outcome: Some(Outcome::Result(Payload {
                    kind: PayloadKind::Json as i32,
                    data: request.arguments_json.into(),
                })),
                metadata,
            })
        })
    }
}

fn tool_request(name: &str, arguments: Value) -> ExecuteToolRequest {
    ExecuteToolRequest {
        tool_name: name.into(),
        arguments_json: json_bytes(&arguments),
        session_id: "s".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn elixir_tools_run_through_the_tool_host() {
    let node = Node::start_with(StoreConfig::default(), Arc::new(EchoTools), |_| {}).await;
    let mut client = node.client().await;

    let tools = client
        .list_elixir_tools(ListElixirToolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tools;
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "echo");

    let response = client
        .execute_elixir_tool(tool_request("echo", json!({"x": 1})))
        .await
        .unwrap()
        .into_inner();
    match response.outcome {
        Some(Outcome::Result(payload)) => {
            assert_eq!(
                serde_json::from_slice::<Value>(&payload.data).unwrap(),
                json!({"x": 1})
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(response.metadata["session"], "s");
    assert!(!response.metadata.contains_key("timeout_ms"));

    // The caller's deadline reaches the host, a little shortened.
    let mut request = tonic::Request::new(tool_request("echo", json!({})));
    request.set_timeout(Duration::from_secs(2));
    let response = client
        .execute_elixir_tool(request)
        .await
        .unwrap()
        .into_inner();
    let timeout_ms: u64 = response.metadata["timeout_ms"].parse().unwrap();
    assert!((1500..=1950).contains(&timeout_ms), "{timeout_ms}");

    // ... and bounds the tool's run.
    let mut request = tonic::Request::new(tool_request("echo", json!({"sleep_ms": 10_000})));
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.execute_elixir_tool(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let response = client
        .execute_elixir_tool(tool_request("fail", json!({})))
        .await
        .unwrap()
        .into_inner();
    match response.outcome {
        Some(Outcome::Error(error)) => assert_eq!(error.message, "it broke"),
        other => panic!("unexpected {other:?}"),
    }

    let status = client
        .execute_elixir_tool(tool_request("nope", json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&status),
        (Code::NotFound, Some("tool_not_found"))
    );
}

#[tokio::test]
async fn without_a_tool_host_every_tool_is_unknown() {
    let node = Node::start().await;
    let mut client = node.client().await;
    let tools = client
        .list_elixir_tools(ListElixirToolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tools;
    assert!(tools.is_empty());
    let status = client
        .execute_elixir_tool(tool_request("echo", json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(&status),
        (Code::NotFound, Some("tool_not_found"))
    );
    assert!(status.message().contains("echo"));
}

#[tokio::test]
async fn shutdown_stops_serving_and_ends_watches() {
    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "s").await;
    register(&mut client, "s", "a", "integer", json!(1), Value::Null)
        .await
        .unwrap();
    let mut stream = watch(&mut client, "s", &["a"], false, 0).await.unwrap();
    let address = node.address();
    let Node { server, store, .. } = node;
    server.shutdown();
    let end = next_update(&mut stream).await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    eventually("the port to be closed", || {
        let address = address.clone();
        async move { tokio::net::TcpStream::connect(address).await.is_err() }
    })
    .await;
    // Sessions belong to the store, not the server.
    assert_eq!(store.list_sessions().len(), 1);
}

/// 4 writers, each on its own connection, write 5 000 times each to their own
/// variable while 10 watchers read every change of all 4 variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_every_watcher_sees_every_version_in_order() {
    const WRITERS: usize = 4;
    const WRITES: u64 = 5_000;
    const WATCHERS: usize = 10;
    const TOTAL: usize = WRITERS * WRITES as usize;

    let node = Node::start().await;
    let mut client = node.client().await;
    create_session(&mut client, "load").await;
    let mut names = Vec::new();
    for w in 0..WRITERS {
        let name = format!("v{w}");
        register(&mut client, "load", &name, "integer", json!(0), Value::Null)
            .await
            .unwrap();
        names.push(name);
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();

    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut client = node.client().await;
        let mut stream = watch(&mut client, "load", &name_refs, false, TOTAL as u32)
            .await
            .unwrap();
        watchers.push(tokio::spawn(async move {
            let _client = client;
            // Per variable id: the last version and value seen.
            let mut last: HashMap<String, (u64, i64)> = HashMap::new();
            let mut received = 0;
            while received < TOTAL {
                let update = next_update(&mut stream).await.unwrap();
                assert_eq!(update.update_type, "value_change");
                let value = value_of(update.variable.as_ref().unwrap())
                    .as_i64()
                    .unwrap();
                let old: i64 = serde_json::from_slice::<Value>(&update.old_value_json)
                    .unwrap()
                    .as_i64()
                    .unwrap();
                let (version, previous) = last.entry(update.variable_id.clone()).or_insert((1, 0));
                assert_eq!(update.version, *version + 1, "version order");
                assert_eq!(old, *previous, "old value");
                *version = update.version;
                *previous = value;
                received += 1;
            }
            last.into_values()
                .map(|(version, _)| version)
                .collect::<Vec<_>>()
        }));
    }

    let started = Instant::now();
    let mut writers = Vec::new();
    for name in names.clone() {
        let mut client = node.client().await;
        writers.push(tokio::spawn(async move {
            for value in 1..=WRITES {
                set(&mut client, "load", write(&name, json!(value)))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let written = started.elapsed();
    for watcher in watchers {
        let versions = watcher.await.unwrap();
        assert_eq!(versions, vec![WRITES + 1; WRITERS]);
    }
    let delivered = started.elapsed();
    eprintln!(
        "load: {TOTAL} writes from {WRITERS} clients in {written:?} ({:.0}/s); \
         {WATCHERS} watchers received all {} updates after {delivered:?}",
        TOTAL as f64 / written.as_secs_f64(),
        TOTAL * WATCHERS,
    );
    let ids: HashSet<String> = node
        .store
        .list_variables("load", "")
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids.len(), WRITERS);
}

#[tokio::test]
async fn the_standalone_binary_serves_until_stdin_closes() {
    let token = generate_token();
    let mut child = Command::new(env!("CARGO_BIN_EXE_snakepit-bridge"))
        .args(["--max-sessions", "1", "--heartbeat-ms", "100"])
        .env(TOKEN_ENV_VAR, &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn snakepit-bridge");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let port: u16 = line
        .trim_end()
        .strip_prefix("BRIDGE_READY:")
        .unwrap_or_else(|| panic!("handshake line {line:?}"))
        .parse()
        .unwrap();

    let mut client = connect_bridge(&format!("127.0.0.1:{port}"), &token)
        .await
        .unwrap();
    create_session(&mut client, "one").await;
    let refused = client
        .create_session(CreateSessionRequest {
            session_id: "two".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error_reason(&refused), Some("session_quota_exceeded"));

    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("snakepit-bridge still running 10 s after its stdin closed");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{status}");
}

#[test]
fn the_standalone_binary_needs_a_token() {
    let output = Command::new(env!("CARGO_BIN_EXE_snakepit-bridge"))
        .env_remove(TOKEN_ENV_VAR)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(TOKEN_ENV_VAR), "{stderr}");
}
