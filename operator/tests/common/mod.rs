//! A real control plane for the operator's tests: etcd, kube-apiserver and kube-controller-manager
//! (garbage collection) on loopback, from `scripts/control-plane.sh` (which honours
//! `KUBEBUILDER_ASSETS`), plus the operator binary itself. Everything is stopped on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub struct Proc(Child);

impl From<Child> for Proc {
    fn from(child: Child) -> Self {
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A binary of this workspace, built beside the test executables (target/<profile>/).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} not built (run the workspace's tests)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assets() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/control-plane.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("control-plane.sh");
    assert!(out.status.success(), "control-plane.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
    // Dropped in reverse order of start: operator(s) first, etcd last.
    operators: Vec<Proc>,
    probe_ports: Vec<u16>,
    _controller_manager: Option<Proc>,
    _apiserver: Proc,
    _etcd: Proc,
}

async fn wait_ready(url: &str) {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = http
            .get(format!("{url}/readyz"))
            .bearer_auth("admin-token")
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kube-apiserver did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl ControlPlane {
    /// A control plane with the CRDs from `crds/` installed.
    pub async fn start(with_controller_manager: bool) -> ControlPlane {
        let cp = Self::start_bare(with_controller_manager).await;
        cp.install_crds().await;
        cp
    }

    /// A control plane without CRDs (for installing the Helm chart).
    pub async fn start_bare(with_controller_manager: bool) -> ControlPlane {
        let bin = assets();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd = Proc(
            Command::new(bin.join("etcd"))
                .args(["--data-dir"])
                .arg(d.join("etcd"))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client_port}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client_port}"),
                ])
                .args([
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer_port}"),
                ])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer_port}"),
                ])
                .args([
                    "--initial-cluster",
                    &format!("default=http://127.0.0.1:{peer_port}"),
                ])
                .arg("--unsafe-no-fsync")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd"),
        );
        // Service-account signing key.
        let key = d.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(
            d.join("tokens.csv"),
            "admin-token,admin,admin,system:masters\n",
        )
        .unwrap();
        let apiserver = Proc(
            Command::new(bin.join("kube-apiserver"))
                .args(["--etcd-servers", &format!("http://127.0.0.1:{client_port}")])
                .args([
                    "--secure-port",
                    &api_port.to_string(),
                    "--bind-address",
                    "127.0.0.1",
                ])
                .arg("--cert-dir")
                .arg(d.join("certs"))
                .arg("--token-auth-file")
                .arg(d.join("tokens.csv"))
                .args(["--authorization-mode", "RBAC"])
                .args(["--service-account-issuer", "https://kubernetes.default.svc"])
                .arg("--service-account-key-file")
                .arg(&key)
                .arg("--service-account-signing-key-file")
                .arg(&key)
                .args(["--service-cluster-ip-range", "10.0.0.0/16"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start kube-apiserver"),
        );
        let url = format!("https://127.0.0.1:{api_port}");
        wait_ready(&url).await;
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: '{url}', insecure-skip-tls-verify: true}}\n\
                 users:\n- name: admin\n  user: {{token: admin-token}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin, namespace: default}}\n\
                 current-context: test\n"
            ),
        )
        .unwrap();
        let controller_manager = with_controller_manager.then(|| {
            Proc(
                Command::new(bin.join("kube-controller-manager"))
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .arg("--authentication-kubeconfig")
                    .arg(&kubeconfig)
                    .arg("--authorization-kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "--leader-elect=false",
                        "--bind-address",
                        "127.0.0.1",
                        "--secure-port",
                        "0",
                        "--port",
                        "0",
                    ])
                    .arg("--service-account-private-key-file")
                    .arg(&key)
                    .arg("--root-ca-file")
                    .arg(d.join("certs/apiserver.crt"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start kube-controller-manager"),
            )
        });
        ControlPlane {
            dir,
            kubeconfig,
            url,
            operators: Vec::new(),
            probe_ports: Vec::new(),
            _controller_manager: controller_manager,
            _apiserver: apiserver,
            _etcd: etcd,
        }
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    /// Creates the CRDs from `crds/` and waits until they are established.
    async fn install_crds(&self) {
        let client = self.client().await;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/syncrelay.io.yaml"),
        )
        .unwrap();
        for doc in text.split("---\n").filter(|d| !d.trim().is_empty()) {
            create_crd(&api, &serde_yaml::from_str(doc).unwrap()).await;
        }
    }

    /// Starts an operator process; returns its index (for `stop_operator`).
    pub fn start_operator(&mut self) -> usize {
        self.start_operator_with(&[])
    }

    pub fn start_operator_with(&mut self, extra: &[&str]) -> usize {
        let port = free_port();
        self.probe_ports.push(port);
        let child = Command::new(workspace_bin("syncrelay-operator"))
            .args(["run", "--probe-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "warn,kube_client=error,syncrelay_operator=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start syncrelay-operator");
        self.operators.push(Proc(child));
        self.operators.len() - 1
    }

    /// Base URL of an operator's probe and metrics server.
    pub fn operator_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.probe_ports[index])
    }

    pub fn operator_pid(&self, index: usize) -> u32 {
        self.operators[index].0.id()
    }

    pub fn stop_operator(&mut self, index: usize) {
        let _ = self.operators[index].0.kill();
        let _ = self.operators[index].0.wait();
    }
}

/// Creates a CustomResourceDefinition and waits until the API server serves it.
pub async fn create_crd(api: &Api<CustomResourceDefinition>, crd: &CustomResourceDefinition) {
    api.create(&PostParams::default(), crd).await.unwrap();
    wait_established(api, crd.metadata.name.as_deref().unwrap()).await;
}

/// Waits until the CustomResourceDefinition `name` is Established (its API served).
pub async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) {
    eventually(&format!("CRD {name} established"), || async {
        api.get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|c| c.status)
            .is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
}

/// Polls until `check` holds (60 s deadline).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Starts a real `syncrelay-node` (an origin with defaults) from the workspace's build output;
/// returns the process, its base URL and its data folder (removed on drop).
pub fn start_node() -> (Proc, String, tempfile::TempDir) {
    start_node_with("")
}

/// Like [`start_node`], with `config` (node YAML) as its configuration file.
pub fn start_node_with(config: &str) -> (Proc, String, tempfile::TempDir) {
    use std::io::{BufRead, BufReader};
    // Integration tests live in target/<profile>/deps; the node binary is built beside them.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("syncrelay-node");
    assert!(
        bin.exists(),
        "{} not built (run the workspace's tests)",
        bin.display()
    );
    let data = tempfile::tempdir().unwrap();
    let config_file = data.path().join("node.yaml");
    std::fs::write(&config_file, config).unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config_file)
        .arg("--data")
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start syncrelay-node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    (Proc(child), url, data)
}

/// How many Events of `type_` (and `reason`, when given) are about the object `name` in
/// `default`, counting repeats folded into one Event.
pub async fn event_count(client: &Client, name: &str, type_: &str, reason: Option<&str>) -> i32 {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    events
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name)
                && e.type_.as_deref() == Some(type_)
                && reason.is_none_or(|r| e.reason.as_deref() == Some(r))
        })
        .map(|e| {
            e.series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1)
        })
        .sum()
}

/// Waits for a Warning Event about the object `name` in `default`.
pub async fn warning_event_for(client: &Client, name: &str) {
    eventually(&format!("a Warning event for {name}"), || async {
        event_count(client, name, "Warning", None).await > 0
    })
    .await;
}
