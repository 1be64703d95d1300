//! Real pods: a one-node Kubernetes 1.20.2 cluster on this machine (`scripts/cluster.sh`: kubelet +
//! Docker, CNI bridge, dnsmasq as cluster DNS, `local` volumes), the image built from the
//! repository's Dockerfile, the chart installed with `helm install` so the operator runs as a pod
//! under the chart's ServiceAccount and RBAC, and `examples/single-cluster/chain.yaml` applied as a
//! user would, until `kubectl wait --for=condition=Ready syncchain/acme` succeeds. Then a client on
//! the host pushes signed, encrypted entries as alice through the edge's Service (its NodePort) and
//! bob reads them back through the origin's Service (its ClusterIP, through kube-proxy).
//!
//! Needs root and Docker (the script installs Docker from Debian and starts dockerd). Nothing is
//! skipped silently: on a host that cannot run the cluster the test fails, unless
//! SYNCRELAY_SKIP_REAL_PODS=1 says to skip it (it then prints that it did).
//! The cluster is torn down (`cluster.sh down`) when the test ends, also when it fails;
//! SYNCRELAY_KEEP_CLUSTER=1 leaves it up for inspection (tear it down by hand then).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use syncrelay_node::client::{HttpTransport, RemoteSession, RemoteStore, SessionOptions};
use syncrelay_node::crypto::keys::Identity;
use syncrelay_node::directory::{DirectoryFile, TenantFile, UserEntry};
use syncrelay_node::store::ContentAddressedStore;
use syncrelay_node::wire::{StoreId, StoreKind};

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

/// A user of the reference vectors: username and keys.
fn vector_identity(name: &str) -> (String, Identity) {
    let keys = syncrelay_node::testdata::load("keys.json");
    let id = &keys["identities"][name];
    (
        id["username"].as_str().unwrap().to_string(),
        Identity::from_pkcs8_pem(
            id["signingPrivateKeyPkcs8"].as_str().unwrap(),
            id["encryptionPrivateKeyPkcs8"].as_str().unwrap(),
        )
        .unwrap(),
    )
}

fn user_store(url: &str, who: &str) -> RemoteStore {
    let (username, identity) = vector_identity(who);
    let session = RemoteSession::new(
        url,
        Arc::new(HttpTransport::new(url, None, Duration::from_secs(30)).unwrap()),
        "acme",
        SessionOptions {
            username,
            identity: Arc::new(identity),
            node_id: format!("real-pods-{who}"),
            max_attempts: 3,
            backoff_base: Duration::from_millis(200),
        },
    );
    RemoteStore::new(
        Arc::new(session),
        StoreId::new("acme", "contacts", StoreKind::Docs).unwrap(),
    )
}

fn users_directory() -> String {
    let user = |name: &str| {
        let (username, identity) = vector_identity(name);
        UserEntry {
            username,
            signing_public_key: identity.signing_public_pem,
            encryption_public_key: identity.encryption_public_pem,
            revoked: false,
        }
    };
    let mut file = DirectoryFile::default();
    file.tenants.insert(
        "acme".into(),
        TenantFile {
            users: vec![user("alice"), user("bob")],
            ..TenantFile::default()
        },
    );
    serde_yaml::to_string(&file).unwrap()
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

#[test]
fn the_example_chain_becomes_ready_in_real_pods() {
    if std::env::var("SYNCRELAY_SKIP_REAL_PODS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: SYNCRELAY_SKIP_REAL_PODS=1 (real pods not tested)");
        return;
    }
    if let Err(why) = host_can_run_a_cluster() {
        panic!("{why}; set SYNCRELAY_SKIP_REAL_PODS=1 to skip this test explicitly");
    }
    let prebuilt = prebuilt_dir();
    let cluster = Cluster::up();
    let version = env!("CARGO_PKG_VERSION");
    let image = format!("{REPOSITORY}:{version}");

    // README step 1: the image from the repository's Dockerfile, here with the binaries this test
    // run built (the Dockerfile's BINARIES=prebuilt path; `docker build .` compiles them inside).
    let started = Instant::now();
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
    );
    eprintln!("image built in {:?}", started.elapsed());

    // README step 2: the chart, the operator as a pod under the chart's RBAC.
    let helm = String::from_utf8(run(Command::new("bash").arg(script("helm.sh"))).stdout)
        .unwrap()
        .trim()
        .to_string();
    let started = Instant::now();
    run_inherit(
        Command::new(&helm)
            .args(["install", "syncrelay"])
            .arg(workspace().join("charts/syncrelay"))
            .args(["-n", "syncrelay", "--create-namespace"])
            .args(["--set", &format!("image.repository={REPOSITORY}")])
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig),
    );
    run_inherit(cluster.kubectl().args([
        "-n",
        "syncrelay",
        "rollout",
        "status",
        "deployment/syncrelay",
        "--timeout=180s",
    ]));
    eprintln!("operator Ready {:?} after helm install", started.elapsed());

    // README step 3: the users' directory Secret (examples/directory-secret.yaml with real keys).
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "acme-users", "namespace": "default"},
        "type": "Opaque",
        "stringData": {"directory.yaml": users_directory()},
    });
    let mut apply = cluster
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(secret.to_string().as_bytes())
        .unwrap();
    assert!(apply.wait().unwrap().success(), "kubectl apply secret");

    // README step 4: the example chain, as it is in the repository.
    let started = Instant::now();
    run_inherit(
        cluster
            .kubectl()
            .args(["apply", "-n", "default", "-f"])
            .arg(workspace().join("examples/single-cluster/chain.yaml")),
    );
    run_inherit(cluster.kubectl().args([
        "-n",
        "default",
        "wait",
        "--for=condition=Ready",
        "syncchain/acme",
        "--timeout=600s",
    ]));
    eprintln!(
        "syncchain/acme Ready {:?} after kubectl apply",
        started.elapsed()
    );
    run_inherit(cluster.kubectl().args([
        "get",
        "syncchains,syncnodes,pods,pvc",
        "-n",
        "default",
        "-o",
        "wide",
    ]));

    // README step 5: clients reach the edge's Service. The cluster has no load balancer: the
    // LoadBalancer Service's NodePort on the node address serves instead.
    let jsonpath = |what: &str, path: &str| {
        String::from_utf8(
            run(cluster
                .kubectl()
                .args(["-n", "default", "get", what, "-o"])
                .arg(format!("jsonpath={path}")))
            .stdout,
        )
        .unwrap()
    };
    let node_ip = jsonpath(
        "nodes",
        "{.items[0].status.addresses[?(@.type==\"InternalIP\")].address}",
    );
    let edge = format!(
        "http://{node_ip}:{}",
        jsonpath("service/acme-office", "{.spec.ports[0].nodePort}")
    );
    let origin = format!(
        "http://{}:1661",
        jsonpath("service/acme-origin", "{.spec.clusterIP}")
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let alice = user_store(&edge, "alice");
        let written: Vec<_> = (0..20)
            .map(|n| {
                syncrelay_node::crypto::signing::author_entry(
                    &vector_identity("alice").1,
                    "doc",
                    n,
                    format!("ciphertext {n}").into_bytes(),
                )
            })
            .collect();
        let outcome = alice.push_entries(written.clone()).await.unwrap();
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        let ids: Vec<String> = written.iter().map(|e| e.metadata.id.clone()).collect();
        let bob = user_store(&origin, "bob");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let read = bob.get_entries(&ids).await.unwrap_or_default();
            if read.len() == ids.len() {
                assert_eq!(read[5].encrypted_data, written[5].encrypted_data);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "bob read {} of 20 entries at the origin after 120 s",
                read.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    eprintln!("alice's 20 entries written at the edge were read by bob at the origin");
}
