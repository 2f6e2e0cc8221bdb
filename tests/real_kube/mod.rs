//! A real Kubernetes control plane for the tests of one test binary: etcd,
//! kube-apiserver (TLS, token authentication, `Node,RBAC` authorization, a service-account
//! issuer and signing key made for the run, an audit log) and kube-controller-manager
//! (Deployment → ReplicaSet → Pod, service-account tokens, garbage collection), built by
//! `hack/kube/build.sh` from Kubernetes' own Go modules.
//!
//! Without a kubelet pods stay Pending, so a fake node (as kwok does) registers a Node,
//! binds unscheduled pods to it, marks them Running and Ready, finishes their graceful
//! deletion, and leaves pods whose image starts with [`FAILING_IMAGE_PREFIX`] or
//! [`UNPULLABLE_REGISTRY`] waiting in `ImagePullBackOff` (the latter first in
//! `ErrImagePull`, as a kubelet's first pull fails), and pods whose image names
//! [`CRASHING_IMAGE`] in `CrashLoopBackOff` with restarts. Pods with init containers stay
//! Pending until their init container statuses (written by the test, which plays the
//! kubelet for them) say every one exited 0. It also serves the kubelet's
//! log endpoint, which the API server calls (over TLS it verifies) for `pods/log`: see
//! [`fake_kubelet`].
//!
//! One control plane serves every test of the binary ([`shared`]); tests keep apart by
//! namespace ([`RealKube::namespace`]). The processes die with the test binary
//! (`setpriv --pdeathsig`), their files live in a temporary directory removed by the next
//! run.
// Each test file uses its own subset of these.
#![allow(dead_code)]

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Pods whose image starts with this never start: `ImagePullBackOff` (as the simulator's
/// `failing_image: "^broken/"`).
pub const FAILING_IMAGE_PREFIX: &str = "broken/";

/// A registry reserved for tests (`.invalid` never resolves): its images fail to pull,
/// `ErrImagePull` first, then `ImagePullBackOff`.
pub const UNPULLABLE_REGISTRY: &str = "registry.invalid/";

/// Images whose path contains this start and exit at once: `CrashLoopBackOff`, restarts.
pub const CRASHING_IMAGE: &str = "/crashes:";

/// The waiting state the fake kubelet gives a container of `image` that has `now` the
/// waiting reason `current` (if any); `None`: it runs.
fn failing_state(image: &str, current: Option<&str>) -> Option<serde_json::Value> {
    let pull = |reason: &str, message: String| {
        Some(json!({"waiting": {"reason": reason, "message": message}}))
    };
    if image.starts_with(FAILING_IMAGE_PREFIX) {
        return pull(
            "ImagePullBackOff",
            format!("Back-off pulling image \"{image}\""),
        );
    }
    if image.starts_with(UNPULLABLE_REGISTRY) {
        return match current {
            None => pull(
                "ErrImagePull",
                format!(
                    "failed to pull and unpack image \"{image}\": dial tcp: lookup registry.invalid: no such host"
                ),
            ),
            Some(_) => pull(
                "ImagePullBackOff",
                format!("Back-off pulling image \"{image}\""),
            ),
        };
    }
    if image.contains(CRASHING_IMAGE) {
        return pull(
            "CrashLoopBackOff",
            "back-off 10s restarting failed container".to_string(),
        );
    }
    None
}
/// The fake node every pod is bound to.
pub const NODE_NAME: &str = "ds-fake-node";
/// The user the contract tests' agents authenticate as (cluster-admin by group), so the
/// audit log tells their writes from the test's own.
pub const AGENT_USER: &str = "ds-agent-test";

const START_DEADLINE: Duration = Duration::from_secs(120);

/// The shared control plane; started on first use.
pub struct RealKube {
    pub dir: PathBuf,
    /// Admin kubeconfig (token user in `system:masters`), for kube and kubectl.
    pub kubeconfig: PathBuf,
    /// Kubeconfig of [`AGENT_USER`].
    pub agent_kubeconfig: PathBuf,
    pub server: String,
    pub ca_pem: String,
    pub audit_log: PathBuf,
    /// How long etcd + kube-apiserver + kube-controller-manager took to be ready.
    pub startup: Duration,
}

static SHARED: OnceLock<Result<RealKube, String>> = OnceLock::new();

/// The control plane of this test binary, started at the first call (blocking that
/// caller until the API server is ready). Fails the test, with what to do, when it cannot
/// start: never skips.
pub fn shared() -> &'static RealKube {
    match SHARED.get_or_init(start_on_own_thread) {
        Ok(k) => k,
        Err(e) => panic!("the real Kubernetes control plane did not start: {e}"),
    }
}

/// Where the binaries are: `DS_KUBE_BIN` (hack/test.sh sets it from hack/kube/build.sh).
fn bin_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("DS_KUBE_BIN").map(PathBuf::from).ok_or(
        "DS_KUBE_BIN is not set: run `bash hack/kube/build.sh` and set DS_KUBE_BIN to the \
         directory it prints (hack/test.sh does both)",
    )?;
    for b in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        if !dir.join(b).is_file() {
            return Err(format!(
                "{} is missing: run `bash hack/kube/build.sh` (DS_KUBE_BIN={})",
                dir.join(b).display(),
                dir.display()
            ));
        }
    }
    Ok(dir)
}

/// Processes are spawned, and the fake node runs, on a thread that lives as long as the
/// test binary: the parent-death signal is tied to the spawning thread, and each test's
/// runtime ends with its test.
fn start_on_own_thread() -> Result<RealKube, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("real-kube".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut children = Vec::new();
                let started = start(&mut children).await;
                let node = match &started {
                    Ok(k) => Some(k.kubeconfig.clone()),
                    Err(_) => None,
                };
                let _ = tx.send(started);
                if let Some(kubeconfig) = node {
                    fake_node(&kubeconfig).await;
                }
                // Keep the children (and this thread) alive until the binary exits.
                std::future::pending::<()>().await;
                drop(children);
            });
        })
        .map_err(|e| format!("spawning the harness thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the harness thread died while starting".to_string())?
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Removes the directories of earlier runs whose process is gone.
fn clean_old_runs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("run-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Spawns `bin args`, dying with this thread, output to `log`.
fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg("--pdeathsig").arg("KILL").arg("--").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn exited(child: &mut Child, what: &str, log: &Path) -> Result<(), String> {
    match child.try_wait() {
        Ok(Some(status)) => Err(format!(
            "{what} exited ({status}); the end of {}:\n{}",
            log.display(),
            tail(log)
        )),
        _ => Ok(()),
    }
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: real\n  context:\n    cluster: real\n    user: {user}\n    namespace: default\ncurrent-context: real\nusers:\n- name: {user}\n  user:\n    token: {token}\npreferences: {{}}\n"
    )
}

/// A client for a kubeconfig file, on the caller's runtime.
pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    kube::Client::try_from(config).expect("client")
}

async fn start(children: &mut Vec<Child>) -> Result<RealKube, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let began = Instant::now();
    let bin = bin_dir()?;
    let root = std::env::temp_dir().join("ds-real-kube");
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    clean_old_runs(&root);
    let dir = root.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };

    // A CA for the serving certificate, and a service-account signing key, for this run.
    let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca.distinguished_name.push(DnType::CommonName, "ds-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let serving_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut serving = CertificateParams::new(vec!["localhost".to_string(), "kubernetes".into()])
        .map_err(|e| e.to_string())?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    serving
        .subject_alt_names
        .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.is_ca = IsCa::ExplicitNoCa;
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &Issuer::from_params(&ca, &ca_key))
        .map_err(|e| e.to_string())?;
    let sa_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let ca_pem = ca_cert.pem();
    let ca_file = write("ca.crt", &ca_pem)?;
    let cert_file = write("apiserver.crt", &serving_cert.pem())?;
    let key_file = write("apiserver.key", &serving_key.serialize_pem())?;
    let sa_key_file = write("sa.key", &sa_key.serialize_pem())?;
    let sa_pub_file = write("sa.pub", &sa_key.public_key_pem())?;

    let (admin_token, kcm_token, agent_token) = (random_token(), random_token(), random_token());
    let tokens = write(
        "tokens.csv",
        &format!(
            "{admin_token},admin,admin-uid,\"system:masters\"\n\
             {kcm_token},system:kube-controller-manager,kcm-uid\n\
             {agent_token},{AGENT_USER},agent-uid,\"system:masters\"\n"
        ),
    )?;
    // Writes only: one line per request once it completed.
    let audit_policy = write(
        "audit-policy.yaml",
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\nrules:\n- level: None\n  verbs: [get, list, watch]\n- level: Metadata\n",
    )?;
    let audit_log = dir.join("audit.log");

    // etcd
    let (etcd_client, etcd_peer) = (free_port()?, free_port()?);
    let etcd_log = dir.join("etcd.log");
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let mut etcd = spawn(
        &bin.join("etcd"),
        &[
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
        &etcd_log,
    )?;
    // The fake kubelet's log endpoint, on the node's address.
    let kubelet =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding the fake kubelet: {e}"))?;
    let kubelet_port = kubelet.local_addr().map_err(|e| e.to_string())?.port();
    // kube-apiserver
    let port = free_port()?;
    let server = format!("https://127.0.0.1:{port}");
    let apiserver_log = dir.join("kube-apiserver.log");
    let mut apiserver = spawn(
        &bin.join("kube-apiserver"),
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The `kubernetes` Service endpoints may not point at loopback; nothing here
            // needs them (envtest does the same).
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", cert_file.display()),
            format!("--tls-private-key-file={}", key_file.display()),
            format!("--client-ca-file={}", ca_file.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=Node,RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", sa_pub_file.display()),
            format!(
                "--service-account-signing-key-file={}",
                sa_key_file.display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", audit_log.display()),
            "--audit-log-mode=blocking".into(),
            format!("--cert-dir={}", dir.join("certs").display()),
            // `pods/log` goes to the fake kubelet, whose certificate this CA signed.
            format!("--kubelet-certificate-authority={}", ca_file.display()),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--v=0".into(),
        ],
        &apiserver_log,
    )?;
    let kubeconfig = write(
        "admin.kubeconfig",
        &kubeconfig_yaml(&server, &ca_pem, "admin", &admin_token),
    )?;
    let agent_kubeconfig = write(
        "agent.kubeconfig",
        &kubeconfig_yaml(&server, &ca_pem, AGENT_USER, &agent_token),
    )?;
    let kcm_kubeconfig = write(
        "kcm.kubeconfig",
        &kubeconfig_yaml(&server, &ca_pem, "kcm", &kcm_token),
    )?;

    // Ready when /readyz answers ok (all post-start hooks, RBAC bootstrap included).
    let client = client_from(&kubeconfig).await;
    loop {
        exited(&mut etcd, "etcd", &etcd_log)?;
        exited(&mut apiserver, "kube-apiserver", &apiserver_log)?;
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        if let Ok(text) = client.request_text(req).await
            && text.trim() == "ok"
        {
            break;
        }
        if began.elapsed() > START_DEADLINE {
            return Err(format!(
                "kube-apiserver not ready after {START_DEADLINE:?}; the end of {}:\n{}",
                apiserver_log.display(),
                tail(&apiserver_log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kube-controller-manager, the way kubeadm runs it: its own identity, one service
    // account per controller, only the controllers the tests need (no node lifecycle: the
    // fake node sends no heartbeats).
    let kcm_log = dir.join("kube-controller-manager.log");
    let mut kcm = spawn(
        &bin.join("kube-controller-manager"),
        &[
            format!("--kubeconfig={}", kcm_kubeconfig.display()),
            format!("--authentication-kubeconfig={}", kcm_kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kcm_kubeconfig.display()),
            "--use-service-account-credentials=true".into(),
            format!(
                "--service-account-private-key-file={}",
                sa_key_file.display()
            ),
            format!("--root-ca-file={}", ca_file.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
            format!("--cert-dir={}", dir.join("kcm-certs").display()),
            "--controllers=deployment-controller,replicaset-controller,\
             garbage-collector-controller,serviceaccount-token-controller,\
             serviceaccount-controller,namespace-controller,endpointslice-controller,\
             root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,\
             disruption-controller,pod-garbage-collector-controller"
                .into(),
            "--concurrent-deployment-syncs=10".into(),
            "--concurrent-replicaset-syncs=10".into(),
            "--v=0".into(),
        ],
        &kcm_log,
    )?;
    // Ready when the service-account controller made `default` in `default`.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    loop {
        exited(&mut kcm, "kube-controller-manager", &kcm_log)?;
        if let Ok(Some(_)) = sas.get_opt("default").await {
            break;
        }
        if began.elapsed() > START_DEADLINE {
            return Err(format!(
                "kube-controller-manager made no default ServiceAccount after \
                 {START_DEADLINE:?}; the end of {}:\n{}",
                kcm_log.display(),
                tail(&kcm_log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::spawn(fake_kubelet(
        kubelet,
        serving_cert.pem(),
        serving_key.serialize_pem(),
    ));
    register_node(&client, kubelet_port).await?;
    children.extend([etcd, apiserver, kcm]);
    Ok(RealKube {
        dir,
        kubeconfig,
        agent_kubeconfig,
        server,
        ca_pem,
        audit_log,
        startup: began.elapsed(),
    })
}

async fn register_node(client: &kube::Client, kubelet_port: u16) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
            "type": "ds-fake-node"}},
    }))
    .unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .map_err(|e| format!("registering the fake node: {e}"))?;
    let status = json!({"status": {
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "FakeNodeReady",
            "message": "ds test fake node", "lastHeartbeatTime": now(),
            "lastTransitionTime": now()}],
        "nodeInfo": {"kubeletVersion": "fake", "kubeProxyVersion": "fake",
            "architecture": "amd64", "operatingSystem": "linux", "machineID": "",
            "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
            "containerRuntimeVersion": "fake://0"},
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| format!("marking the fake node Ready: {e}"))?;
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The lines the fake kubelet has for one container: [`LOG_LINES`] of them, then one more
/// every 200 ms when followed.
pub fn fake_log_line(ns: &str, pod: &str, container: &str, n: usize) -> String {
    format!("fake kubelet: {ns}/{pod}/{container} line {n}")
}

/// How many lines a container has logged when first read.
pub const LOG_LINES: usize = 3;

/// The kubelet's `/containerLogs/NS/POD/CONTAINER` endpoint, as the API server calls it for
/// `pods/log`: the lines of [`fake_log_line`], the last `tailLines` of them, and with
/// `follow=true` more until the reader goes. TLS with the API server's own certificate
/// (it names 127.0.0.1), which the API server verifies against the test CA.
async fn fake_kubelet(listener: TcpListener, cert_pem: String, key_pem: String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the serving certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("the serving key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS configuration");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    listener.set_nonblocking(true).expect("non-blocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = serve_log(tls).await;
            }
        });
    }
}

async fn serve_log<S>(mut s: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let url = url::Url::parse(&format!("http://kubelet{target}")).expect("a request target");
    let parts: Vec<String> = url
        .path_segments()
        .into_iter()
        .flatten()
        .map(String::from)
        .collect();
    let ["containerLogs", ns, pod, container] =
        parts.iter().map(String::as_str).collect::<Vec<_>>()[..]
    else {
        s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    };
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let tail: usize = query
        .get("tailLines")
        .and_then(|t| t.parse().ok())
        .unwrap_or(LOG_LINES);
    let follow = query.get("follow").is_some_and(|f| f == "true");
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        .await?;
    for n in (LOG_LINES.saturating_sub(tail) + 1)..=LOG_LINES {
        s.write_all(format!("{}\n", fake_log_line(ns, pod, container, n)).as_bytes())
            .await?;
    }
    s.flush().await?;
    if follow {
        for n in LOG_LINES + 1.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.write_all(format!("{}\n", fake_log_line(ns, pod, container, n)).as_bytes())
                .await?;
            s.flush().await?;
        }
    }
    s.shutdown().await
}

/// The fake kubelet: binds, starts, fails and finishes deleting pods. Runs forever,
/// re-watching after errors.
async fn fake_node(kubeconfig: &Path) {
    let client = client_from(kubeconfig).await;
    let all: Api<Pod> = Api::all(client.clone());
    let mut next_ip: u32 = 2;
    let mut events = watcher(all, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(ev) = events.next().await {
        let Ok(pod) = ev else { continue };
        if let Err(e) = act_on(&client, &pod, &mut next_ip).await {
            eprintln!(
                "fake node: {}: {e}",
                pod.metadata.name.as_deref().unwrap_or("?")
            );
        }
    }
}

async fn act_on(client: &kube::Client, pod: &Pod, next_ip: &mut u32) -> Result<(), kube::Error> {
    let (Some(name), Some(ns)) = (
        pod.metadata.name.as_deref(),
        pod.metadata.namespace.as_deref(),
    ) else {
        return Ok(());
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.node_name.is_none() {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        });
        return ignore_gone(
            api.create_subresource::<_, serde_json::Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await
            .map(|_| ()),
        );
    }
    // Pods bound to other nodes are those nodes' business, as with a real kubelet.
    if spec.node_name.as_deref() != Some(NODE_NAME) {
        return Ok(());
    }
    if pod.metadata.deletion_timestamp.is_some() {
        // What the kubelet does once the containers stopped: the final delete.
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        return ignore_gone(api.delete(name, &dp).await.map(|_| ()));
    }
    // A kubelet starts the containers only once every init container exited 0. Nothing
    // runs init containers here: such a pod stays Pending until its init container
    // statuses say so, which the test that plays the kubelet for them writes.
    if let Some(inits) = spec.init_containers.as_ref().filter(|i| !i.is_empty()) {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref());
        let succeeded = |name: &str| {
            statuses.into_iter().flatten().any(|s| {
                s.name == name
                    && s.state
                        .as_ref()
                        .and_then(|st| st.terminated.as_ref())
                        .is_some_and(|t| t.exit_code == 0)
            })
        };
        if !inits.iter().all(|c| succeeded(&c.name)) {
            return Ok(());
        }
    }
    let status = pod.status.clone().unwrap_or_default();
    let waiting_reason = |name: &str| -> Option<String> {
        status
            .container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
    };
    let failing = spec
        .containers
        .iter()
        .any(|c| failing_state(c.image.as_deref().unwrap_or(""), None).is_some());
    let now = now();
    let patch = if failing {
        // One step per event, as kwok's stages: ErrImagePull, then ImagePullBackOff (our
        // own patch is the next event); a settled pod is left alone.
        let next: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                let image = c.image.clone().unwrap_or_default();
                let current = waiting_reason(&c.name);
                (
                    c,
                    image.clone(),
                    failing_state(&image, current.as_deref()),
                    current,
                )
            })
            .collect();
        let settled = next.iter().all(|(_, _, state, current)| {
            let wanted = state
                .as_ref()
                .and_then(|s| s["waiting"]["reason"].as_str().map(str::to_string));
            wanted == *current
        });
        if settled && status.container_statuses.is_some() {
            return Ok(());
        }
        let statuses: Vec<_> = next
            .into_iter()
            .map(|(c, image, state, _)| {
                let crashing = state
                    .as_ref()
                    .is_some_and(|s| s["waiting"]["reason"] == "CrashLoopBackOff");
                let restarts = if crashing { 3 } else { 0 };
                let mut st = json!({"name": c.name, "image": image, "imageID": "",
                    "ready": false, "restartCount": restarts, "started": false,
                    "state": state.unwrap_or_else(|| json!({"running": {"startedAt": now}}))});
                if crashing {
                    st["lastState"] = json!({"terminated": {"reason": "Error", "exitCode": 1,
                        "startedAt": now, "finishedAt": now}});
                }
                st
            })
            .collect();
        json!({"status": {
            "phase": "Pending", "hostIP": "10.88.0.1", "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": now},
            ],
            "containerStatuses": statuses,
        }})
    } else {
        if status.phase.as_deref() == Some("Running") {
            return Ok(());
        }
        let ip = format!("10.88.{}.{}", (*next_ip >> 8) & 0xff, *next_ip & 0xff);
        *next_ip += 1;
        let statuses: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                    "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": now}}})
            })
            .collect();
        json!({"status": {
            "phase": "Running", "hostIP": "10.88.0.1", "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": statuses,
        }})
    };
    ignore_gone(
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ()),
    )
}

fn ignore_gone(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        other => other,
    }
}

impl RealKube {
    /// An admin client on the caller's runtime.
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }

    /// A client of [`AGENT_USER`] on the caller's runtime.
    pub async fn agent_client(&self) -> kube::Client {
        client_from(&self.agent_kubeconfig).await
    }

    /// A kubeconfig (YAML) for a bearer token, e.g. a service account's.
    pub fn kubeconfig_for_token(&self, user: &str, token: &str) -> String {
        kubeconfig_yaml(&self.server, &self.ca_pem, user, token)
    }

    /// Creates a namespace `PREFIX-<random>` and waits for its `default` ServiceAccount
    /// (pods are refused until it exists).
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", &random_token()[..8]);
        create_namespace(&self.client().await, &name).await;
        name
    }

    /// Write requests in the audit log, for counting.
    pub fn audit(&self, user: &str, namespace_prefix: &str) -> AuditCounter {
        AuditCounter {
            path: self.audit_log.clone(),
            user: user.to_string(),
            namespace_prefix: namespace_prefix.to_string(),
            from: Mutex::new(file_len(&self.audit_log)),
        }
    }
}

/// Creates `name` and waits for its `default` ServiceAccount.
pub async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let began = Instant::now();
    while !matches!(sas.get_opt("default").await, Ok(Some(_))) {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "no default ServiceAccount in {name} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Counts one user's write requests in namespaces starting with a prefix (and on those
/// namespaces themselves), from the API server's audit log: what the simulator's
/// `Counters` count, on the real server.
pub struct AuditCounter {
    path: PathBuf,
    user: String,
    namespace_prefix: String,
    from: Mutex<u64>,
}

const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

impl AuditCounter {
    /// Forgets what was counted so far.
    pub fn reset(&self) {
        // A request answered just now may not be in the log yet.
        std::thread::sleep(Duration::from_millis(200));
        *self.from.lock().unwrap() = file_len(&self.path);
    }

    /// Requests with this verb on this resource since the last reset (`"*"`: any).
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.events()
            .iter()
            .filter(|(v, r)| (verb == "*" || v == verb) && (resource == "*" || r == resource))
            .count() as u64
    }

    /// Write requests since the last reset.
    pub fn writes(&self) -> u64 {
        self.events()
            .iter()
            .filter(|(v, _)| WRITE_VERBS.contains(&v.as_str()))
            .count() as u64
    }

    /// (verb, resource) of this user's requests in scope since the last reset.
    pub fn events(&self) -> Vec<(String, String)> {
        std::thread::sleep(Duration::from_millis(200));
        let from = *self.from.lock().unwrap();
        let mut f = std::fs::File::open(&self.path).expect("audit log");
        f.seek(SeekFrom::Start(from)).expect("seek audit log");
        let mut text = String::new();
        f.read_to_string(&mut text).expect("read audit log");
        let mut out = Vec::new();
        for line in std::io::BufReader::new(text.as_bytes()).lines() {
            let Ok(line) = line else { continue };
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if ev["user"]["username"] != self.user.as_str() {
                continue;
            }
            let obj = &ev["objectRef"];
            let resource = obj["resource"].as_str().unwrap_or("");
            let ns = obj["namespace"].as_str().unwrap_or("");
            let name = obj["name"].as_str().unwrap_or("");
            let in_scope = ns.starts_with(&self.namespace_prefix)
                || (resource == "namespaces" && name.starts_with(&self.namespace_prefix));
            if in_scope {
                out.push((
                    ev["verb"].as_str().unwrap_or("").to_string(),
                    resource.to_string(),
                ));
            }
        }
        out
    }
}
