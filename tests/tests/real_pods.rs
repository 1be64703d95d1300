//! Real pods: a one-node Kubernetes 1.20.2 cluster on this machine (`scripts/cluster.sh`: kubelet +
//! Docker, CNI bridge, dnsmasq as cluster DNS, `local` volumes), the image built from the
//! repository's Dockerfile, and the README's "From zero to a running chain on a real cluster"
//! followed step by step: `helm install` (the operator runs as a pod under the chart's
//! ServiceAccount and RBAC), `helm test`, users' keys from `syncrelay-node keygen` pasted into
//! `examples/directory-secret.yaml`, `examples/single-cluster/chain.yaml` applied as it is, `kubectl
//! wait --for=condition=Ready syncchain/acme`, `syncrelay-node status` against the edge.
//!
//! Then, on the same cluster, one step after another (each timed on stderr):
//! 1. alice pushes encrypted entries through one edge's Service (NodePort), bob reads them through
//!    the other edge's Service (ClusterIP, via kube-proxy) and decrypts them;
//! 2. an origin pod is deleted: it comes back on its claim with its data (it serves every entry
//!    without having pulled or received one) and the chain is Ready again;
//! 3. one node's settings change in the SyncChain: exactly that node set's pods roll;
//! 4. alice is revoked in the directory Secret: every pod of every hop refuses her, bob still served;
//! 5. the operator pod is killed: its replacement reconciles everything and writes nothing;
//! 6. the chain is deleted: everything it created is garbage-collected;
//! 7. multi-region: `examples/multi-region/` in three namespaces (central, eu, us), addresses
//!    substituted; data written in one region is read in the other.
//!
//! Needs root and Docker (the script installs Docker from Debian and starts dockerd). Nothing is
//! skipped silently: on a host that cannot run the cluster the test fails, unless
//! SYNCRELAY_SKIP_REAL_PODS=1 says to skip it (it then prints that it did).
//! The cluster is torn down (`cluster.sh down`) when the test ends, also when it fails;
//! SYNCRELAY_KEEP_CLUSTER=1 leaves it up for inspection (tear it down by hand then).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use syncrelay_node::client::{HttpTransport, RemoteSession, RemoteStore, SessionOptions};
use syncrelay_node::crypto::keys::Identity;
use syncrelay_node::crypto::payload;
use syncrelay_node::store::ContentAddressedStore;
use syncrelay_node::wire::{Entry, StoreId, StoreKind};
/// The image the test builds and the chart runs (`--set image.repository=`), as README step 1
/// builds `REGISTRY/syncrelay:0.1.0`.
const REPOSITORY: &str = "localhost/syncrelay";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn script(name: &str) -> PathBuf {
    workspace().join("scripts").join(name)
}

/// The cluster, torn down on drop (test failure or panic included).
struct Cluster {
    /// cluster.sh's state folder (`down` deletes it).
    state: PathBuf,
    kubeconfig: PathBuf,
    docker: String,
}

impl Cluster {
    fn up() -> Cluster {
        let state = tempfile::Builder::new()
            .prefix("syncrelay-cluster-")
            .tempdir()
            .unwrap()
            .keep();
        // Constructed before `up` so that a half-started cluster is torn down too.
        let mut cluster = Cluster {
            kubeconfig: state.join("kubeconfig"),
            state,
            docker: String::new(),
        };
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(script("cluster.sh"))
            .arg("up")
            .arg(&cluster.state)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        assert!(status.success(), "scripts/cluster.sh up failed");
        eprintln!("cluster up in {:?}", started.elapsed());
        let env = run(Command::new("bash")
            .arg(script("cluster.sh"))
            .arg("env")
            .arg(&cluster.state));
        let docker = String::from_utf8(env.stdout)
            .unwrap()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("DOCKER=").map(str::to_string))
            .expect("DOCKER= in cluster.sh env");
        cluster.docker = docker;
        cluster
    }

    fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("SYNCRELAY_KEEP_CLUSTER").is_some() {
            eprintln!(
                "SYNCRELAY_KEEP_CLUSTER: left up; KUBECONFIG={}; tear down with: bash scripts/cluster.sh down {}",
                self.kubeconfig.display(),
                self.state.display()
            );
            return;
        }
        if std::thread::panicking() {
            // What a person debugging needs: the pods, the events, the operator's log.
            for args in [
                &[
                    "get",
                    "pods,pvc,svc,syncchains,syncnodes",
                    "-A",
                    "-o",
                    "wide",
                ][..],
                &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
                &[
                    "logs",
                    "-n",
                    "syncrelay",
                    "deployment/syncrelay",
                    "--tail=100",
                ][..],
            ] {
                let _ = self
                    .kubectl()
                    .args(args)
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit())
                    .status();
            }
        }
        let status = Command::new("bash")
            .arg(script("cluster.sh"))
            .arg("down")
            .arg(&self.state)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("scripts/cluster.sh down failed: {status:?}");
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_inherit(cmd: &mut Command) {
    let status = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Where the test executables' workspace binaries are (target/<profile>/), relative to the
/// workspace: the Docker build context.
fn prebuilt_dir() -> String {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    for bin in ["syncrelay-node", "syncrelay-operator"] {
        assert!(
            dir.join(bin).exists(),
            "{} not built (run the workspace's tests: cargo test --workspace --bins --tests)",
            dir.join(bin).display()
        );
    }
    dir.canonicalize()
        .unwrap()
        .strip_prefix(workspace())
        .unwrap_or_else(|_| {
            panic!(
                "the target directory {} must lie inside the workspace (the Docker build context)",
                dir.display()
            )
        })
        .to_str()
        .unwrap()
        .to_string()
}

fn host_can_run_a_cluster() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("id -u: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("the real-pods test must run as root (Docker, iptables, mounts)".into());
    }
    if Command::new("apt-get").arg("--version").output().is_err()
        && Command::new("dockerd").arg("--version").output().is_err()
    {
        return Err("no dockerd and no apt-get to install Docker with".into());
    }
    Ok(())
}

const NS: &str = "default";
const TENANT: &str = "acme";
const DB: &str = "contacts";

/// Polls `probe` every second until it yields a value; fails naming `what` after `limit`.
fn poll<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Each step's wall time, printed as it ends and as a table at the end.
#[derive(Default)]
struct Timings(Vec<(String, Duration)>);

impl Timings {
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        eprintln!("=== step: {name}");
        let started = Instant::now();
        let out = f();
        let took = started.elapsed();
        eprintln!("=== step done in {:.1} s: {name}", took.as_secs_f64());
        self.0.push((name.to_string(), took));
        out
    }

    fn print(&self) {
        eprintln!("| step | seconds |\n|---|---|");
        for (name, took) in &self.0 {
            eprintln!("| {name} | {:.1} |", took.as_secs_f64());
        }
    }
}

impl Cluster {
    fn json(&self, args: &[&str]) -> Value {
        let out = run(self.kubectl().args(args).args(["-o", "json"]));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The items of `kubectl get KINDS -n ns`.
    fn items(&self, ns: &str, kinds: &str) -> Vec<Value> {
        self.json(&["get", kinds, "-n", ns])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn ok(&self, args: &[&str]) {
        run_inherit(self.kubectl().args(args));
    }

    fn apply_value(&self, ns: &str, object: &Value) {
        let mut apply = self
            .kubectl()
            .args(["apply", "-n", ns, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .spawn()
            .unwrap();
        apply
            .stdin
            .take()
            .unwrap()
            .write_all(object.to_string().as_bytes())
            .unwrap();
        assert!(apply.wait().unwrap().success(), "kubectl apply {object}");
    }

    fn wait_chain_ready(&self, ns: &str, chain: &str) {
        self.ok(&[
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            &format!("syncchain/{chain}"),
            "--timeout=300s",
        ]);
    }

    fn pods(&self, ns: &str) -> Vec<Pod> {
        self.items(ns, "pods").iter().map(Pod::from_json).collect()
    }

    /// The pods of the SyncNode `instance` that run the node (not its backup runs).
    fn node_pods(&self, ns: &str, instance: &str) -> Vec<Pod> {
        self.pods(ns)
            .into_iter()
            .filter(|p| p.instance == instance && p.app == "syncrelay-node")
            .collect()
    }

    fn node_ip(&self) -> String {
        let nodes = self.json(&["get", "nodes"]);
        nodes["items"][0]["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "InternalIP")
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A Service's URL from the host: its NodePort on the node address when it has one (the
    /// cluster has no load balancer), else its ClusterIP through kube-proxy.
    fn service_url(&self, ns: &str, name: &str) -> String {
        let svc = self.json(&["get", "service", name, "-n", ns]);
        match svc["spec"]["ports"][0]["nodePort"].as_i64() {
            Some(port) => format!("http://{}:{port}", self.node_ip()),
            None => format!(
                "http://{}:{}",
                svc["spec"]["clusterIP"].as_str().unwrap(),
                svc["spec"]["ports"][0]["port"]
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Pod {
    name: String,
    uid: String,
    ip: String,
    ready: bool,
    terminating: bool,
    /// `app.kubernetes.io/instance`: the SyncNode for node pods (and for its backup pods).
    instance: String,
    /// `app.kubernetes.io/name`: `syncrelay-node` for node pods, `syncrelay-backup` for backups.
    app: String,
    claim: Option<String>,
}

impl Pod {
    fn from_json(p: &Value) -> Pod {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Pod {
            name: s(&p["metadata"]["name"]),
            uid: s(&p["metadata"]["uid"]),
            ip: s(&p["status"]["podIP"]),
            ready: p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            }),
            terminating: !p["metadata"]["deletionTimestamp"].is_null(),
            instance: s(&p["metadata"]["labels"]["app.kubernetes.io/instance"]),
            app: s(&p["metadata"]["labels"]["app.kubernetes.io/name"]),
            claim: p["spec"]["volumes"].as_array().and_then(|v| {
                v.iter()
                    .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
                    .map(str::to_string)
            }),
        }
    }

    fn url(&self) -> String {
        format!("http://{}:1661", self.ip)
    }
}

/// Sum of a Prometheus text metric's samples whose label set contains every `labels` fragment.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if !labels.iter().all(|l| rest.contains(l)) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        *found.get_or_insert(0.0) += value;
    }
    found
}

fn http_get(url: &str) -> Option<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    })
}

/// A user made as README step 3 says: `syncrelay-node keygen`, the printed entry pasted into the
/// directory.
struct User {
    dir: PathBuf,
    entry: serde_yaml::Value,
}

impl User {
    fn keygen(bin_dir: &Path, keys: &Path, name: &str) -> User {
        let dir = keys.join(name);
        let out = run(Command::new(bin_dir.join("syncrelay-node"))
            .args(["keygen", "--out"])
            .arg(&dir)
            .args(["--name", &format!("CN={name}/O=acme")]));
        let printed: Vec<serde_yaml::Value> = serde_yaml::from_slice(&out.stdout).unwrap();
        User {
            dir,
            entry: printed.into_iter().next().unwrap(),
        }
    }

    fn username(&self) -> String {
        self.entry["username"].as_str().unwrap().to_string()
    }

    fn identity(&self) -> Identity {
        Identity::load(
            &self.dir.join("signing.pem"),
            &self.dir.join("encryption.pem"),
        )
        .unwrap()
    }

    fn store(&self, url: &str) -> RemoteStore {
        let session = RemoteSession::new(
            url,
            Arc::new(HttpTransport::new(url, None, Duration::from_secs(30)).unwrap()),
            TENANT,
            SessionOptions {
                username: self.username(),
                identity: Arc::new(self.identity()),
                node_id: format!("real-pods-{}", self.username()),
                max_attempts: 2,
                backoff_base: Duration::from_millis(200),
            },
        );
        RemoteStore::new(
            Arc::new(session),
            StoreId::new(TENANT, DB, StoreKind::Docs).unwrap(),
        )
    }
}

/// `examples/directory-secret.yaml` with the users' printed entries in place of the placeholder
/// (README step 3), `revoked` set for the users named.
fn directory_secret(users: &[&User], revoked: &[&str]) -> Value {
    let example =
        std::fs::read_to_string(workspace().join("examples/directory-secret.yaml")).unwrap();
    let mut secret: serde_yaml::Value = serde_yaml::from_str(&example).unwrap();
    let mut directory: serde_yaml::Value =
        serde_yaml::from_str(secret["stringData"]["directory.yaml"].as_str().unwrap()).unwrap();
    directory["tenants"][TENANT]["users"] = serde_yaml::Value::Sequence(
        users
            .iter()
            .map(|u| {
                let mut e = u.entry.clone();
                e["revoked"] = revoked.contains(&u.username().as_str()).into();
                e
            })
            .collect(),
    );
    secret["stringData"]["directory.yaml"] = serde_yaml::to_string(&directory).unwrap().into();
    serde_json::to_value(&secret).unwrap()
}

struct Users {
    alice: User,
    bob: User,
}

/// Payloads sealed under a key only the tenant's users share (the nodes never see it).
fn sealed_entries(author: &User, key: &[u8; 32], doc: &str, count: usize) -> Vec<Entry> {
    let id = author.identity();
    (0..count)
        .map(|n| {
            syncrelay_node::crypto::signing::author_entry(
                &id,
                doc,
                n,
                payload::seal(key, format!("{doc} note {n}").as_bytes()),
            )
        })
        .collect()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}

fn push(user: &User, url: &str, entries: &[Entry]) {
    let outcome = block_on(user.store(url).push_entries(entries.to_vec())).unwrap();
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
}

/// Polls until `reader` gets every entry at `url` and decrypts each to what was written.
fn read_and_decrypt(
    reader: &User,
    url: &str,
    key: &[u8; 32],
    written: &[Entry],
    doc: &str,
    limit: Duration,
) {
    let ids: Vec<String> = written.iter().map(|e| e.metadata.id.clone()).collect();
    let store = reader.store(url);
    let read = poll(
        &format!("{} reads {} entries at {url}", reader.username(), ids.len()),
        limit,
        || {
            let read = block_on(store.get_entries(&ids)).unwrap_or_default();
            (read.len() == ids.len()).then_some(read)
        },
    );
    let by_id: BTreeMap<&str, &Entry> = read.iter().map(|e| (e.metadata.id.as_str(), e)).collect();
    for (n, w) in written.iter().enumerate() {
        let got = by_id[w.metadata.id.as_str()];
        assert_eq!(
            got.metadata.content_hash, w.metadata.content_hash,
            "{}",
            w.metadata.id
        );
        let plain = payload::open(key, &got.encrypted_data).expect("decrypts with the users' key");
        assert_eq!(plain, format!("{doc} note {n}").into_bytes());
    }
}

/// README steps 1–2 (+ `helm test`): the image, the chart, the operator Ready.
fn install(cluster: &Cluster, t: &mut Timings, prebuilt: &str, helm: &str) {
    let version = env!("CARGO_PKG_VERSION");
    let image = format!("{REPOSITORY}:{version}");
    // README step 1: the image from the repository's Dockerfile, here with the binaries this test
    // run built (the Dockerfile's BINARIES=prebuilt path; `docker build .` compiles them inside).
    t.step("docker build (BINARIES=prebuilt)", || {
        run_inherit(
            Command::new(&cluster.docker)
                .env("DOCKER_BUILDKIT", "1")
                .args([
                    "build",
                    "--progress=plain",
                    "--build-arg",
                    "BINARIES=prebuilt",
                ])
                .arg("--build-arg")
                .arg(format!("PREBUILT_DIR={prebuilt}"))
                .args(["-t", &image])
                .arg(workspace()),
        )
    });
    // README step 2: the chart, the operator as a pod under the chart's RBAC.
    t.step("helm install → operator Ready", || {
        run_inherit(
            Command::new(helm)
                .args(["install", "syncrelay"])
                .arg(workspace().join("charts/syncrelay"))
                .args(["-n", "syncrelay", "--create-namespace"])
                .args(["--set", &format!("image.repository={REPOSITORY}")])
                .arg("--kubeconfig")
                .arg(&cluster.kubeconfig),
        );
        cluster.ok(&[
            "-n",
            "syncrelay",
            "rollout",
            "status",
            "deployment/syncrelay",
            "--timeout=180s",
        ]);
    });
    t.step("helm test", || {
        run_inherit(
            Command::new(helm)
                .args([
                    "test",
                    "syncrelay",
                    "-n",
                    "syncrelay",
                    "--logs",
                    "--timeout",
                    "3m",
                ])
                .arg("--kubeconfig")
                .arg(&cluster.kubeconfig),
        )
    });
}

/// README steps 3–5: users, the example chain, Ready, `syncrelay-node status` at the edge.
fn apply_example_chain(cluster: &Cluster, t: &mut Timings, bin_dir: &Path, keys: &Path) -> Users {
    let users = t.step("keygen alice and bob, directory Secret", || {
        let users = Users {
            alice: User::keygen(bin_dir, keys, "alice"),
            bob: User::keygen(bin_dir, keys, "bob"),
        };
        cluster.apply_value(NS, &directory_secret(&[&users.alice, &users.bob], &[]));
        users
    });
    t.step("kubectl apply chain.yaml → syncchain/acme Ready", || {
        run_inherit(
            cluster
                .kubectl()
                .args(["apply", "-n", NS, "-f"])
                .arg(workspace().join("examples/single-cluster/chain.yaml")),
        );
        cluster.wait_chain_ready(NS, "acme");
    });
    cluster.ok(&["get", "syncchains,syncnodes", "-n", NS]);
    cluster.ok(&["get", "pods,pvc,svc", "-n", NS, "-o", "wide"]);
    let origin_pods = cluster.node_pods(NS, "acme-origin").len();
    assert_eq!(origin_pods, 3, "the example's origin has 3 replicas");
    let office = cluster.service_url(NS, "acme-office");
    let status = run(Command::new(bin_dir.join("syncrelay-node")).args(["status", &office]));
    eprintln!(
        "syncrelay-node status {office}:\n{}",
        String::from_utf8_lossy(&status.stdout)
    );
    users
}

/// Step 1: alice writes at one edge (office, NodePort), bob reads at the other (branch, ClusterIP)
/// and decrypts.
fn alice_writes_bob_reads(cluster: &Cluster, users: &Users, key: &[u8; 32]) -> Vec<Entry> {
    let office = cluster.service_url(NS, "acme-office");
    let branch = cluster.service_url(NS, "acme-branch");
    let written = sealed_entries(&users.alice, key, "doc", 20);
    push(&users.alice, &office, &written);
    read_and_decrypt(
        &users.bob,
        &branch,
        key,
        &written,
        "doc",
        Duration::from_secs(120),
    );
    eprintln!("alice's 20 entries written at {office} (office) were read and decrypted by bob at {branch} (branch)");
    written
}

/// Step 2: an origin pod deleted comes back on its claim with its data; the chain converges.
fn origin_pod_returns_with_its_data(
    cluster: &Cluster,
    users: &Users,
    key: &[u8; 32],
    written: &[Entry],
) {
    let name = "acme-origin-1";
    let before = cluster
        .pods(NS)
        .into_iter()
        .find(|p| p.name == name)
        .unwrap();
    read_and_decrypt(
        &users.bob,
        &before.url(),
        key,
        written,
        "doc",
        Duration::from_secs(60),
    );
    let claim = before.claim.clone().expect("an origin pod has a claim");
    let pvc = |c: &str| cluster.json(&["get", "pvc", c, "-n", NS]);
    let pvc_before = pvc(&claim);
    cluster.ok(&["delete", "pod", name, "-n", NS, "--wait=true"]);
    let after = poll(
        &format!("{name} recreated and Ready"),
        Duration::from_secs(180),
        || {
            cluster
                .pods(NS)
                .into_iter()
                .find(|p| p.name == name && p.uid != before.uid && p.ready && !p.terminating)
        },
    );
    assert_eq!(after.claim.as_deref(), Some(claim.as_str()));
    let pvc_after = pvc(&claim);
    assert_eq!(
        pvc_after["metadata"]["uid"], pvc_before["metadata"]["uid"],
        "same claim"
    );
    assert_eq!(
        pvc_after["spec"]["volumeName"], pvc_before["spec"]["volumeName"],
        "same volume"
    );
    // Its data came from its volume: it holds every entry while having pulled none from its
    // peers and been pushed none.
    let metrics = poll(
        &format!("{name} reports its 20 entries"),
        Duration::from_secs(60),
        || {
            let text = http_get(&format!("{}/metrics", after.url()))?;
            (metric_sum(&text, "syncrelay_store_entries", &["\"contacts\""]) == Some(20.0))
                .then_some(text)
        },
    );
    let pulled = metric_sum(
        &metrics,
        "syncrelay_sync_entries_total",
        &["direction=\"pull\""],
    )
    .unwrap_or(0.0);
    let pushed_to_it = metric_sum(&metrics, "syncrelay_entries_ingested_total", &[]).unwrap_or(0.0);
    assert_eq!(
        (pulled, pushed_to_it),
        (0.0, 0.0),
        "{name} came back empty and was refilled:\n{metrics}"
    );
    read_and_decrypt(
        &users.bob,
        &after.url(),
        key,
        written,
        "doc",
        Duration::from_secs(30),
    );
    // The chain converges: new entries written at the office reach every origin replica.
    let more = sealed_entries(&users.alice, key, "after-restart", 5);
    push(&users.alice, &cluster.service_url(NS, "acme-office"), &more);
    for p in cluster.node_pods(NS, "acme-origin") {
        read_and_decrypt(
            &users.bob,
            &p.url(),
            key,
            &more,
            "after-restart",
            Duration::from_secs(120),
        );
    }
    cluster.wait_chain_ready(NS, "acme");
}

/// Entries of the tenant's database a pod holds, from its metrics (0 when it holds none).
fn store_entries(pod: &Pod) -> Option<f64> {
    let text = http_get(&format!("{}/metrics", pod.url()))?;
    Some(metric_sum(&text, "syncrelay_store_entries", &["\"contacts\""]).unwrap_or(0.0))
}

/// Waits for a Job to succeed; a failed Job fails the test with its pods' logs.
fn wait_job(cluster: &Cluster, name: &str) {
    poll(
        &format!("job/{name} succeeded"),
        Duration::from_secs(240),
        || {
            let job = cluster.json(&["get", "job", name, "-n", NS]);
            if job["status"]["failed"].as_i64().unwrap_or(0) > 0 {
                let logs = run(cluster.kubectl().args([
                    "logs",
                    "-n",
                    NS,
                    "-l",
                    &format!("job-name={name}"),
                    "--tail=50",
                ]));
                panic!(
                    "job/{name} failed: {}\n{}",
                    job["status"],
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
            (job["status"]["succeeded"].as_i64() == Some(1)).then_some(())
        },
    );
}

/// Step 4 (README "Backup and restore of an origin"): backups turned on for the chain's origin,
/// a run taken from its CronJob and reported in the SyncNode's status; then every origin volume is
/// lost (all three replicas), the origins come back empty, the runbook's restore Job brings the
/// snapshot back, and every replica holds every entry with the same ids and content hashes.
fn origin_backup_and_restore(cluster: &Cluster, users: &Users, key: &[u8; 32], written: &[Entry]) {
    let origin_pods = || cluster.node_pods(NS, "acme-origin");
    let more = sealed_entries(&users.alice, key, "before-backup", 10);
    push(&users.alice, &cluster.service_url(NS, "acme-office"), &more);
    for p in origin_pods() {
        read_and_decrypt(
            &users.bob,
            &p.url(),
            key,
            &more,
            "before-backup",
            Duration::from_secs(120),
        );
    }
    let total = store_entries(&origin_pods()[0]).unwrap();
    assert!(
        total >= 35.0,
        "20 + 5 + 10 entries written so far, {total} held"
    );

    // Backups on (a schedule that does not fire during the test; the run is started by hand).
    cluster.ok(&[
        "patch", "syncchain", "acme", "-n", NS, "--type=json", "-p",
        r#"[{"op": "add", "path": "/spec/nodes/0/backup", "value": {"schedule": "0 3 1 1 *", "storage": {"size": "1Gi"}, "keep": 2}}]"#,
    ]);
    let cron = poll(
        "cronjob/acme-origin-backup",
        Duration::from_secs(120),
        || {
            let out = cluster
                .kubectl()
                .args([
                    "get",
                    "cronjob",
                    "acme-origin-backup",
                    "-n",
                    NS,
                    "-o",
                    "json",
                ])
                .output()
                .unwrap();
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
        },
    );
    // What `kubectl create job --from=cronjob/…` does (that kubectl asks for batch/v1 CronJobs,
    // which Kubernetes 1.20 does not serve).
    let template = &cron["spec"]["jobTemplate"];
    let job = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "acme-origin-backup-manual",
            "labels": template["metadata"]["labels"],
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
        },
        "spec": template["spec"],
    });
    cluster.apply_value(NS, &job);
    wait_job(cluster, "acme-origin-backup-manual");
    let backup = poll(
        "syncnode/acme-origin reports the backup",
        Duration::from_secs(120),
        || {
            let sn = cluster.json(&["get", "syncnode", "acme-origin", "-n", NS]);
            let b = sn["status"]["backup"].clone();
            (b["lastSuccess"]["job"] == "acme-origin-backup-manual").then_some(b)
        },
    );
    eprintln!("status.backup: {backup}");
    assert_eq!(backup["scheduled"], true);
    assert_eq!(backup["lastRun"]["result"], "Succeeded");
    assert_eq!(
        backup["lastSuccess"]["entries"].as_f64(),
        Some(total),
        "{backup}"
    );
    let status: Value =
        serde_json::from_str(&http_get(&format!("{}/status", origin_pods()[0].url())).unwrap())
            .unwrap();
    assert_eq!(
        backup["lastSuccess"]["stores"].as_u64(),
        Some(status["stores"].as_array().unwrap().len() as u64),
        "every store the origin lists: {backup}"
    );
    assert!(
        backup["lastSuccess"]["completionTime"].is_string(),
        "{backup}"
    );
    let snapshot = backup["lastSuccess"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    // Every copy lost: the origin's three volumes, and the relay (a full copy: left running, it
    // pushes what it holds back into an empty origin by itself, which is how a chain with relays
    // survives a lost origin; a backup is for when no copy is left). The chain and both node sets
    // paused (the operator would scale them back), the StatefulSets scaled to 0, the origin's
    // claims deleted.
    let before = origin_pods();
    let claims: Vec<String> = before.iter().filter_map(|p| p.claim.clone()).collect();
    assert_eq!(claims.len(), 3, "{before:?}");
    let pause = |kind: &str, name: &str, paused: bool| {
        cluster.ok(&[
            "patch",
            kind,
            name,
            "-n",
            NS,
            "--type=merge",
            "-p",
            &format!(r#"{{"spec": {{"paused": {paused}}}}}"#),
        ]);
    };
    pause("syncchain", "acme", true);
    for node in ["acme-origin", "acme-eu"] {
        pause("syncnode", node, true);
        cluster.ok(&["scale", "statefulset", node, "-n", NS, "--replicas=0"]);
    }
    poll(
        "the origin and relay pods are gone",
        Duration::from_secs(180),
        || {
            cluster
                .pods(NS)
                .iter()
                .all(|p| {
                    p.app != "syncrelay-node"
                        || (p.instance != "acme-origin" && p.instance != "acme-eu")
                })
                .then_some(())
        },
    );
    let mut delete = vec!["delete", "pvc", "-n", NS, "--wait=true"];
    delete.extend(claims.iter().map(String::as_str));
    cluster.ok(&delete);
    // The origin resumed (the chain and relay stay paused): the operator scales it to 3 again,
    // and each pod starts on a new, empty volume.
    pause("syncnode", "acme-origin", false);
    let empty = poll(
        "three new, empty origin pods Ready",
        Duration::from_secs(240),
        || {
            let pods = origin_pods();
            (pods.len() == 3
                && pods
                    .iter()
                    .all(|p| p.ready && !p.terminating && !before.iter().any(|b| b.uid == p.uid)))
            .then_some(pods)
        },
    );
    for p in &empty {
        assert_eq!(store_entries(p), Some(0.0), "{} starts empty", p.name);
    }

    // The runbook's restore Job, as the example file has it.
    let image = cluster.json(&["get", "statefulset", "acme-origin", "-n", NS])["spec"]["template"]
        ["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    apply_example(
        cluster,
        NS,
        "examples/backup/restore-job.yaml",
        &[("ghcr.io/syncrelay/syncrelay:latest", image.as_str())],
    );
    wait_job(cluster, "acme-origin-restore");
    let logs = run(cluster
        .kubectl()
        .args(["logs", "-n", NS, "job/acme-origin-restore"]));
    let manifest: Value = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("restore prints the manifest");
    assert_eq!(
        syncrelay_node::backup::snapshot_name(manifest["takenAtMs"].as_i64().unwrap()),
        snapshot,
        "the newest snapshot was restored"
    );

    // Every replica holds every entry again (the restore reached one; its peers copied it).
    for p in origin_pods() {
        poll(
            &format!("{} holds {total} entries", p.name),
            Duration::from_secs(120),
            || (store_entries(&p) == Some(total)).then_some(()),
        );
        read_and_decrypt(
            &users.bob,
            &p.url(),
            key,
            written,
            "doc",
            Duration::from_secs(30),
        );
        read_and_decrypt(
            &users.bob,
            &p.url(),
            key,
            &more,
            "before-backup",
            Duration::from_secs(30),
        );
    }
    // The chain resumed: it unpauses the relay, which comes back with its own copy.
    pause("syncchain", "acme", false);
    cluster.ok(&[
        "delete",
        "job",
        "acme-origin-backup-manual",
        "acme-origin-restore",
        "-n",
        NS,
        "--cascade=foreground",
        "--wait=true",
    ]);
    cluster.wait_chain_ready(NS, "acme");
}

/// name → generation of every StatefulSet and Deployment.
fn workload_generations(cluster: &Cluster) -> BTreeMap<String, i64> {
    cluster
        .items(NS, "statefulsets,deployments")
        .iter()
        .map(|w| {
            (
                format!(
                    "{}/{}",
                    w["kind"].as_str().unwrap(),
                    w["metadata"]["name"].as_str().unwrap()
                ),
                w["metadata"]["generation"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Step 3: a changed setting of one node (office's cache size) rolls exactly office's pods.
fn one_node_set_rolls(cluster: &Cluster) {
    let chain = cluster.json(&["get", "syncchain", "acme", "-n", NS]);
    assert_eq!(chain["spec"]["nodes"][2]["name"], "office");
    let pods_before: BTreeMap<String, Pod> = cluster
        .pods(NS)
        .into_iter()
        .map(|p| (p.uid.clone(), p))
        .collect();
    let generations_before = workload_generations(cluster);
    let size = 134217728;
    cluster.ok(&[
        "patch",
        "syncchain",
        "acme",
        "-n",
        NS,
        "--type=json",
        "-p",
        &format!(r#"[{{"op":"replace","path":"/spec/nodes/2/cacheMaxBytes","value":{size}}}]"#),
    ]);
    poll(
        "office's Deployment rolled out",
        Duration::from_secs(240),
        || {
            let d = cluster.json(&["get", "deployment", "acme-office", "-n", NS]);
            let replicas = d["spec"]["replicas"].as_i64()?;
            let rolled = d["metadata"]["generation"].as_i64()?
                > generations_before["Deployment/acme-office"]
                && d["status"]["observedGeneration"] == d["metadata"]["generation"]
                && d["status"]["updatedReplicas"].as_i64() == Some(replicas)
                && d["status"]["readyReplicas"].as_i64() == Some(replicas)
                && d["status"]["replicas"].as_i64() == Some(replicas);
            let office = cluster.node_pods(NS, "acme-office");
            let fresh = office.len() as i64 == replicas
                && office
                    .iter()
                    .all(|p| p.ready && !p.terminating && !pods_before.contains_key(&p.uid));
            (rolled && fresh).then_some(())
        },
    );
    let config = cluster.json(&["get", "configmap", "acme-office-config", "-n", NS]);
    assert!(config["data"]["node.yaml"]
        .as_str()
        .unwrap()
        .contains(&size.to_string()));
    let others_before: BTreeSet<(String, String)> = pods_before
        .values()
        .filter(|p| p.instance != "acme-office" && p.app == "syncrelay-node")
        .map(|p| (p.name.clone(), p.uid.clone()))
        .collect();
    let others_after: BTreeSet<(String, String)> = cluster
        .pods(NS)
        .into_iter()
        .filter(|p| p.instance != "acme-office" && p.app == "syncrelay-node")
        .map(|p| (p.name, p.uid))
        .collect();
    assert_eq!(
        others_after, others_before,
        "only office's pods were replaced"
    );
    let mut generations_after = workload_generations(cluster);
    generations_after.remove("Deployment/acme-office");
    let mut expected = generations_before;
    expected.remove("Deployment/acme-office");
    assert_eq!(generations_after, expected, "no other workload changed");
    cluster.wait_chain_ready(NS, "acme");
}

/// Step 4: alice revoked in the users' Secret is refused by every pod of every hop.
fn revoked_user_is_refused_everywhere(cluster: &Cluster, users: &Users) {
    let started = Instant::now();
    cluster.apply_value(
        NS,
        &directory_secret(&[&users.alice, &users.bob], &[&users.alice.username()]),
    );
    let pods: Vec<Pod> = cluster
        .pods(NS)
        .into_iter()
        .filter(|p| p.instance.starts_with("acme-") && p.app == "syncrelay-node")
        .collect();
    assert_eq!(pods.len(), 6, "origin ×3, eu, office, branch: {pods:?}");
    let mut refusing = BTreeSet::new();
    poll("every pod refuses alice", Duration::from_secs(300), || {
        for p in &pods {
            if !refusing.contains(&p.name)
                && block_on(users.alice.store(&p.url()).get_store_head()).is_err()
            {
                eprintln!(
                    "{} refuses alice {:.1} s after the Secret changed",
                    p.name,
                    started.elapsed().as_secs_f64()
                );
                refusing.insert(p.name.clone());
            }
        }
        (refusing.len() == pods.len()).then_some(())
    });
    for p in &pods {
        block_on(users.bob.store(&p.url()).get_store_head())
            .unwrap_or_else(|e| panic!("{} refuses bob too: {e}", p.name));
        let err = block_on(users.alice.store(&p.url()).get_store_head()).unwrap_err();
        eprintln!("{}: alice refused: {err}", p.name);
    }
}

/// What the operator writes: each object it applies (StatefulSets, Deployments, Services,
/// ConfigMaps, Secrets) with its resourceVersion, and the SyncNodes' and the chain's
/// generation, spec, labels and owners (their status changes with every figures refresh, so their
/// resourceVersion does too).
fn written_state(cluster: &Cluster) -> BTreeMap<String, (Value, Value)> {
    let mut out = BTreeMap::new();
    for o in cluster.items(
        NS,
        "statefulsets,deployments,services,configmaps,secrets,cronjobs",
    ) {
        out.insert(
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            ),
            (o["metadata"]["resourceVersion"].clone(), o),
        );
    }
    for o in cluster.items(NS, "syncnodes,syncchains") {
        let written = serde_json::json!([
            o["metadata"]["generation"],
            o["spec"],
            o["metadata"]["labels"],
            o["metadata"]["ownerReferences"]
        ]);
        out.insert(
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            ),
            (written, o),
        );
    }
    out
}

/// The paths at which two JSON values differ, with both sides (for a failure message).
fn json_diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                json_diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}

/// Step 6: the operator pod killed; its replacement reconciles every object and writes nothing.
fn operator_replacement_writes_nothing(cluster: &Cluster) {
    let operator_pods = || -> Vec<Pod> {
        cluster
            .pods("syncrelay")
            .into_iter()
            .filter(|p| {
                p.instance == "syncrelay"
                    && p.name.starts_with("syncrelay-")
                    && !p.name.ends_with("-test")
            })
            .collect()
    };
    let old = operator_pods();
    assert_eq!(old.len(), 1, "{old:?}");
    let nodes = cluster.items(NS, "syncnodes").len() as f64;
    let before = written_state(cluster);
    cluster.ok(&[
        "delete",
        "pod",
        &old[0].name,
        "-n",
        "syncrelay",
        "--wait=true",
    ]);
    let new = poll("a new operator pod Ready", Duration::from_secs(180), || {
        operator_pods()
            .into_iter()
            .find(|p| p.uid != old[0].uid && p.ready && !p.terminating)
    });
    // Reconciled: every SyncNode twice over (its first pass at start, then its 30 s refresh) and
    // the chain at least once.
    let metrics = poll(
        "the new operator reconciled everything",
        Duration::from_secs(120),
        || {
            let text = http_get(&format!("http://{}:8080/metrics", new.ip))?;
            let nodes_done = metric_sum(
                &text,
                "syncrelay_operator_reconciles_total",
                &["\"syncnode\""],
            )?;
            let chains_done = metric_sum(
                &text,
                "syncrelay_operator_reconciles_total",
                &["\"syncchain\""],
            )?;
            (nodes_done >= 2.0 * nodes && chains_done >= 1.0).then_some(text)
        },
    );
    eprintln!(
        "new operator: {:?} SyncNode and {:?} SyncChain reconciles, {:?} errors",
        metric_sum(
            &metrics,
            "syncrelay_operator_reconciles_total",
            &["\"syncnode\""]
        ),
        metric_sum(
            &metrics,
            "syncrelay_operator_reconciles_total",
            &["\"syncchain\""]
        ),
        metric_sum(&metrics, "syncrelay_operator_reconcile_errors_total", &[]),
    );
    let after = written_state(cluster);
    let mut changed = Vec::new();
    for key in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
        match (before.get(key), after.get(key)) {
            (Some((w1, o1)), Some((w2, o2))) if w1 != w2 => {
                let mut diff = Vec::new();
                json_diff("", o1, o2, &mut diff);
                changed.push(format!("{key}:\n  {}", diff.join("\n  ")));
            }
            (Some(_), Some(_)) => {}
            (b, _) => changed.push(format!(
                "{key}: {}",
                if b.is_some() { "deleted" } else { "created" }
            )),
        }
    }
    assert!(
        changed.is_empty(),
        "the replacement operator wrote:\n{}",
        changed.join("\n")
    );
}

/// Step 7: the chain deleted, everything it owns (transitively) is garbage-collected.
fn chain_is_garbage_collected(cluster: &Cluster) {
    const KINDS: &str = "syncchains,syncnodes,statefulsets,deployments,replicasets,pods,services,endpoints,configmaps,secrets,controllerrevisions,cronjobs";
    let objects = cluster.items(NS, KINDS);
    let chain_uid = objects
        .iter()
        .find(|o| o["kind"] == "SyncChain" && o["metadata"]["name"] == "acme")
        .unwrap()["metadata"]["uid"]
        .clone();
    let mut owned: BTreeMap<String, String> = BTreeMap::new(); // uid → Kind/name
    let mut frontier = vec![chain_uid.as_str().unwrap().to_string()];
    while let Some(owner) = frontier.pop() {
        for o in &objects {
            let uid = o["metadata"]["uid"].as_str().unwrap().to_string();
            let owned_by = o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["uid"] == owner.as_str()));
            if owned_by && !owned.contains_key(&uid) {
                owned.insert(
                    uid.clone(),
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap()
                    ),
                );
                frontier.push(uid);
            }
        }
    }
    let count = |kind: &str| {
        owned
            .values()
            .filter(|n| n.starts_with(&format!("{kind}/")))
            .count()
    };
    eprintln!("objects owned by syncchain/acme: {}", owned.len());
    assert_eq!(count("SyncNode"), 4);
    assert_eq!(count("StatefulSet"), 2);
    assert_eq!(count("Deployment"), 2);
    assert_eq!(count("Pod"), 6);
    assert_eq!(count("ConfigMap"), 4);
    assert_eq!(count("CronJob"), 1, "the origin's backups (step 4)");
    assert!(count("Service") >= 4, "{owned:?}");
    assert!(
        count("Secret") >= 5,
        "identities and the chain's directory: {owned:?}"
    );
    cluster.ok(&["delete", "syncchain", "acme", "-n", NS, "--wait=false"]);
    poll(
        "everything syncchain/acme owned is deleted",
        Duration::from_secs(240),
        || {
            let left: Vec<String> = cluster
                .items(NS, KINDS)
                .iter()
                .filter_map(|o| owned.get(o["metadata"]["uid"].as_str().unwrap()).cloned())
                .collect();
            left.is_empty().then_some(())
        },
    );
    let claims = cluster.items(NS, "pvc");
    assert!(
        claims
            .iter()
            .any(|c| c["metadata"]["name"] == "acme-origin-backup"),
        "the backup volume outlives the chain"
    );
    eprintln!(
        "left after the chain: {} PersistentVolumeClaims: the backup volume and those of its StatefulSets (kept by Kubernetes, as for any StatefulSet)",
        claims.len()
    );
}

#[test]
fn the_example_chain_in_real_pods() {
    if std::env::var("SYNCRELAY_SKIP_REAL_PODS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: SYNCRELAY_SKIP_REAL_PODS=1 (real pods not tested)");
        return;
    }
    if let Err(why) = host_can_run_a_cluster() {
        panic!("{why}; set SYNCRELAY_SKIP_REAL_PODS=1 to skip this test explicitly");
    }
    let prebuilt = prebuilt_dir();
    let bin_dir = workspace().join(&prebuilt);
    let keys = tempfile::tempdir().unwrap();
    let helm = String::from_utf8(run(Command::new("bash").arg(script("helm.sh"))).stdout)
        .unwrap()
        .trim()
        .to_string();
    let mut t = Timings::default();
    let cluster = t.step("cluster.sh up", Cluster::up);
    install(&cluster, &mut t, &prebuilt, &helm);
    let users = apply_example_chain(&cluster, &mut t, &bin_dir, keys.path());
    let key = payload::random_key();
    let written = t.step("1. alice writes at office, bob reads at branch", || {
        alice_writes_bob_reads(&cluster, &users, &key)
    });
    t.step("2. origin pod deleted → back with its data", || {
        origin_pod_returns_with_its_data(&cluster, &users, &key, &written)
    });
    t.step("3. office's settings changed → only office rolls", || {
        one_node_set_rolls(&cluster)
    });
    t.step(
        "4. origin backed up → every origin volume lost → restored",
        || origin_backup_and_restore(&cluster, &users, &key, &written),
    );
    t.step("5. alice revoked → refused by every pod", || {
        revoked_user_is_refused_everywhere(&cluster, &users)
    });
    t.step(
        "6. operator pod killed → replacement writes nothing",
        || operator_replacement_writes_nothing(&cluster),
    );
    t.step("7. chain deleted → garbage-collected", || {
        chain_is_garbage_collected(&cluster)
    });
    t.step("8. multi-region: written in eu, read in us", || {
        multi_region(&cluster, &bin_dir, keys.path(), &users, &key)
    });
    t.print();
}

/// A CA and a certificate for the central origin's in-cluster names (what cert-manager would
/// issue): `tls.crt`, `tls.key`, `ca.crt`.
fn central_certificate(dir: &Path, namespace: &str) -> BTreeMap<&'static str, String> {
    let sh = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    sh(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=real-pods test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    sh(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=central-origin",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    let sans = format!(
        "subjectAltName=DNS:central-origin.{namespace}.svc.cluster.local,DNS:central-origin.{namespace}.svc,DNS:*.central-origin-peers.{namespace}.svc.cluster.local\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    );
    std::fs::write(dir.join("ext.cnf"), sans).unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    ]);
    ["tls.crt", "tls.key", "ca.crt"]
        .into_iter()
        .map(|f| (f, std::fs::read_to_string(dir.join(f)).unwrap()))
        .collect()
}

fn secret(name: &str, data: &BTreeMap<&str, String>) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "stringData": data,
    })
}

/// `kubectl apply -n ns` of a file of the repository, `replace` substituted in its text.
fn apply_example(cluster: &Cluster, ns: &str, file: &str, replace: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(workspace().join(file)).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "{file} names {from}");
        text = text.replace(from, to);
    }
    let mut apply = cluster
        .kubectl()
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(apply.wait().unwrap().success(), "kubectl apply {file}");
}

/// Step 8: `examples/multi-region/` as it is, addresses substituted: the central origin in
/// namespace `central` (TLS, its certificate for the in-cluster name), each region's chain in its
/// own namespace syncing from it through `externalOrigin`; data written in eu is read in us.
fn multi_region(cluster: &Cluster, bin_dir: &Path, keys: &Path, users: &Users, key: &[u8; 32]) {
    const CENTRAL: &str = "central";
    let regions = [("eu", "region-eu"), ("us", "region-us")];
    for ns in [CENTRAL, "region-eu", "region-us"] {
        cluster.ok(&["create", "namespace", ns]);
    }
    let certs = tempfile::tempdir().unwrap();
    let tls = central_certificate(certs.path(), CENTRAL);
    cluster.apply_value(CENTRAL, &secret("central-origin-tls", &tls));
    // Each regional relay's identity: keygen --server with the name the operator gives that node
    // (CN=<chain>-<node>.<namespace>), its entry registered in the central directory.
    let mut trusted = Vec::new();
    for (region, ns) in regions {
        let dir = keys.join(format!("relay-{region}"));
        let out = run(Command::new(bin_dir.join("syncrelay-node"))
            .args(["keygen", "--server", "--out"])
            .arg(&dir)
            .args(["--name", &format!("CN={region}-relay.{ns}")]));
        let printed: Vec<serde_yaml::Value> = serde_yaml::from_slice(&out.stdout).unwrap();
        trusted.extend(printed);
        let identity: BTreeMap<&str, String> = ["signing.pem", "encryption.pem"]
            .into_iter()
            .map(|f| (f, std::fs::read_to_string(dir.join(f)).unwrap()))
            .collect();
        cluster.apply_value(ns, &secret(&format!("relay-{region}-identity"), &identity));
        cluster.apply_value(
            ns,
            &secret(
                "central-ca",
                &BTreeMap::from([("ca.crt", tls["ca.crt"].clone())]),
            ),
        );
        cluster.apply_value(ns, &directory_secret(&[&users.alice, &users.bob], &[]));
    }
    let mut central_directory = directory_secret(&[&users.alice, &users.bob], &[]);
    let text = central_directory["stringData"]["directory.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let mut directory: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    directory["tenants"][TENANT]["trustedServers"] = serde_yaml::Value::Sequence(trusted);
    central_directory["stringData"]["directory.yaml"] =
        serde_yaml::to_string(&directory).unwrap().into();
    cluster.apply_value(CENTRAL, &central_directory);

    // cert-manager's Certificate API (the tests' faithful subset of its CRD; no cert-manager image
    // here): the operator writes the Certificate, and the test plays the issuer by having put the
    // Secret it would write (`central-origin-tls`, above).
    cluster.ok(&[
        "apply",
        "-f",
        workspace()
            .join("operator/tests/fixtures/cert-manager-certificates-crd.yaml")
            .to_str()
            .unwrap(),
    ]);
    cluster.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/certificates.cert-manager.io",
        "--timeout=60s",
    ]);
    apply_example(
        cluster,
        CENTRAL,
        "examples/multi-region/central/origin.yaml",
        &[],
    );
    let origin = format!("https://central-origin.{CENTRAL}.svc.cluster.local:1661");
    for (region, ns) in regions {
        apply_example(
            cluster,
            ns,
            &format!("examples/multi-region/region-{region}/chain.yaml"),
            &[("https://origin.sync.example.com:1661", &origin)],
        );
    }
    cluster.wait_chain_ready(CENTRAL, "central");
    let certificate = cluster.json(&[
        "get",
        "certificates.cert-manager.io",
        "central-origin",
        "-n",
        CENTRAL,
    ]);
    assert_eq!(certificate["spec"]["secretName"], "central-origin-tls");
    assert_eq!(certificate["spec"]["issuerRef"]["name"], "sync-ca");
    let names: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "central-origin.central.svc.cluster.local",
        "central-origin-0.central-origin-peers.central.svc.cluster.local",
        "origin.sync.example.com",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    for (region, ns) in regions {
        cluster.wait_chain_ready(ns, region);
    }
    cluster.ok(&["get", "syncchains,syncnodes,pods", "-A", "-o", "wide"]);
    let eu = cluster.service_url("region-eu", "eu-office");
    let us = cluster.service_url("region-us", "us-office");
    let written = sealed_entries(&users.alice, key, "regions", 10);
    push(&users.alice, &eu, &written);
    read_and_decrypt(
        &users.bob,
        &us,
        key,
        &written,
        "regions",
        Duration::from_secs(180),
    );
    eprintln!("alice's 10 entries written in region eu ({eu}) were read and decrypted by bob in region us ({us})");
}
