//! TLS between hops with real `syncrelay-node` processes on loopback (issue 18, item 5).
//!
//! Certificates come from test CAs made here with `rcgen` (in process: no external tool, and every
//! certificate's DER is at hand to compare with what a node presents). Each node's certificate
//! and key are laid out as kubelet mounts a Secret — files in a `..<version>` folder, a `..data`
//! symlink to it, `tls.crt`/`tls.key` symlinks through `..data` — and rotated as kubelet does: a
//! new folder, then `..data` swapped by rename.
//!
//! 1. origin → relay → edge, every hop serving HTTPS, each downstream verifying its upstream with
//!    `caFile`: entries written at the origin are read at the edge with the same ids and hashes.
//!    The origin's certificate is rotated (new key, same CA; then a certificate from a second CA
//!    after the relay's `caFile` gained that CA): each time a fresh handshake presents the new
//!    certificate, the origin's PID unchanged, and after every connection is cut (a TCP relay in
//!    this test sits between relay and origin) the relay reconnects and keeps syncing.
//! 2. An upstream presenting a certificate from another CA, then one for another name: the relay
//!    refuses it, stores nothing, and its `/status` link is `down` with a reason that says what is
//!    wrong; once the upstream presents a proper certificate, the link recovers.
//! 3. A client that completes the handshake and then sends nothing is closed by the header
//!    timeout instead of holding its connection's place.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{eventually, signed_entry, Client, DB};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use syncrelay_node::wire::Entry;

/// The names every node's certificate is for: the tests reach nodes at 127.0.0.1.
const LOOPBACK: &[&str] = &["localhost", "127.0.0.1"];

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, with a new key.
    fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

/// Installs `leaf` as version `version` in `dir/tls`, the way kubelet updates a mounted Secret:
/// the files in a new `..v<version>` folder, a temporary symlink to it renamed over `..data`
/// (atomic), the previous folder removed. `tls.crt`/`tls.key` link through `..data`.
fn install(dir: &Path, version: u32, leaf: &Leaf) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let folder = format!("..v{version}");
    std::fs::create_dir(tls.join(&folder)).unwrap();
    std::fs::write(tls.join(&folder).join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(tls.join(&folder).join("tls.key"), &leaf.key_pem).unwrap();
    let previous = std::fs::read_link(tls.join("..data")).ok();
    std::os::unix::fs::symlink(&folder, tls.join("..data_tmp")).unwrap();
    std::fs::rename(tls.join("..data_tmp"), tls.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(tls.join(file)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), tls.join(file)).unwrap();
        }
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(tls.join(previous)).unwrap();
    }
}

/// The `tls:` config line of a node whose files [`install`] lays out in `dir`.
fn tls_config(dir: &Path) -> String {
    format!(
        "tls: {{certFile: '{d}/tls/tls.crt', keyFile: '{d}/tls/tls.key'}}\n",
        d = dir.display()
    )
}

/// Writes a CA bundle file atomically (temporary file, then rename).
fn write_bundle(path: &Path, cas: &[&Ca]) {
    let pem: String = cas.iter().map(|ca| ca.pem.as_str()).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A finished TLS handshake with 127.0.0.1:`port`, verifying the server against `cas`.
fn handshake(port: u16, cas: &[&Ca]) -> Result<(rustls::ClientConnection, TcpStream), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(rustls::pki_types::CertificateDer::from(ca.der.clone()))
            .unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut socket = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).map_err(|e| e.to_string())?;
    }
    Ok((conn, socket))
}

/// The leaf certificate (DER) a fresh TLS handshake with 127.0.0.1:`port` presents, verified
/// against `cas`.
fn presented(port: u16, cas: &[&Ca]) -> Result<Vec<u8>, String> {
    let (conn, _socket) = handshake(port, cas)?;
    let chain = conn.peer_certificates().ok_or("no certificate")?;
    Ok(chain[0].to_vec())
}

/// Polls until a fresh handshake with `port` presents `want`; fails after 15 s.
async fn until_presented(port: u16, cas: &[&Ca], want: &Leaf) -> Duration {
    let started = Instant::now();
    loop {
        let got = presented(port, cas);
        if got.as_deref() == Ok(want.der.as_slice()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the node still presents another certificate: {:?}",
            got.map(|der| der.len())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTPS client of the tests that trusts `cas`.
fn https_client(url: &str, cas: &[&Ca]) -> Client {
    let mut builder = reqwest::Client::builder();
    for ca in cas {
        builder = builder
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap());
    }
    Client {
        http: builder.build().unwrap(),
        base: url.to_string(),
        token: None,
    }
}

async fn status(client: &Client) -> Value {
    let r = client.get("/status").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The node's first link in its `/status`.
async fn link(client: &Client) -> Value {
    status(client).await["links"][0].clone()
}

/// Polls a node's first link until `done` holds; fails after `within`.
async fn until_link(client: &Client, within: Duration, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let l = link(client).await;
        if done(&l) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {l}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reason(l: &Value) -> &str {
    l["stateReason"].as_str().unwrap_or("")
}

/// A loopback TCP relay on its own runtime and thread, between a node and its upstream: TLS
/// passes through it untouched, and [`cut`](Self::cut) closes every connection, so that the
/// next requests make new handshakes.
struct TcpRelay {
    port: u16,
    accepted: Arc<AtomicU64>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpRelay {
    fn start(target_port: u16) -> TcpRelay {
        let accepted = Arc::new(AtomicU64::new(0));
        let open: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (counter, handles) = (accepted.clone(), open.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            counter.fetch_add(1, Ordering::SeqCst);
                            let task = tokio::spawn(async move {
                                let target = ("127.0.0.1", target_port);
                                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                            let mut open = handles.lock().unwrap();
                            open.retain(|h| !h.is_finished());
                            open.push(task.abort_handle());
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        TcpRelay {
            port,
            accepted,
            open,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Closes every open connection (both sides).
    fn cut(&self) {
        for handle in self.open.lock().unwrap().drain(..) {
            handle.abort();
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn batch(doc: &str, n: usize) -> Vec<Entry> {
    (0..n).map(|i| signed_entry("alice", doc, i, 512)).collect()
}

/// Reads every written entry at `reader` (ids by scan, then the entries) and compares ids,
/// content hashes and payloads.
async fn assert_readable(reader: &Client, written: &[Entry]) {
    let want: std::collections::BTreeSet<String> =
        written.iter().map(|e| e.metadata.id.clone()).collect();
    eventually("every written entry listed at the edge", || async {
        let seen: std::collections::BTreeSet<String> = reader.ids(DB).await.into_iter().collect();
        want.is_subset(&seen)
    })
    .await;
    let ids: Vec<String> = written.iter().map(|e| e.metadata.id.clone()).collect();
    let read = reader.fetch(DB, &ids, "bob").await;
    assert_eq!(read.len(), written.len());
    for (got, sent) in read.iter().zip(written) {
        assert_eq!(got.metadata.id, sent.metadata.id);
        assert_eq!(got.metadata.content_hash, sent.metadata.content_hash);
        assert_eq!(
            got.encrypted_data, sent.encrypted_data,
            "{}",
            sent.metadata.id
        );
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_syncs_over_https_and_rotated_certificates_are_served_without_a_restart() {
    let started = Instant::now();
    let ca1 = Ca::new("syncrelay test CA 1");
    let ca2 = Ca::new("syncrelay test CA 2");
    let mut c = Cluster::new(&["origin", "relay", "edge"]);
    c.scheme = "https";
    let dirs: Vec<PathBuf> = (0..3).map(|i| c.dir(i)).collect();
    for dir in &dirs {
        install(dir, 1, &ca1.leaf(LOOPBACK));
    }
    let relay_bundle = dirs[1].join("upstream-ca.pem");
    let edge_bundle = dirs[2].join("upstream-ca.pem");
    write_bundle(&relay_bundle, &[&ca1]);
    write_bundle(&edge_bundle, &[&ca1]);

    c.configure(0, &format!("role: origin\n{}", tls_config(&dirs[0])));
    c.start(0);
    let origin_port = c.members[0].port;
    let cut_point = TcpRelay::start(origin_port);
    c.configure(
        1,
        &format!(
            "role: relay\nupstreams: [{{name: origin, url: 'https://127.0.0.1:{}', caFile: '{}'}}]\n\
             databases: [{{tenant: vectors, db: {DB}}}]\n{}",
            cut_point.port,
            relay_bundle.display(),
            tls_config(&dirs[1])
        ),
    );
    c.configure(
        2,
        &format!(
            "role: edge\nupstreams: [{{name: relay, url: '{}', caFile: '{}'}}]\n{}",
            c.url(1),
            edge_bundle.display(),
            tls_config(&dirs[2])
        ),
    );
    c.start(1);
    c.start(2);
    assert!(c.url(2).starts_with("https://"));

    let cas = [&ca1, &ca2];
    let mut writer = https_client(&c.url(0), &cas);
    writer.login("alice").await;
    let mut reader = https_client(&c.url(2), &cas);
    reader.login("bob").await;
    let relay = https_client(&c.url(1), &cas);

    // 1. Data flows: written at the origin, read at the edge (through the relay), over HTTPS.
    let first = batch("tls-first", 20);
    writer.push(DB, &first).await;
    assert_readable(&reader, &first).await;
    until_link(&relay, Duration::from_secs(20), "relay current", |l| {
        l["state"] == "current" && l["lag"] == 0
    })
    .await;
    assert_eq!(status(&relay).await["entries"], 20);
    for (i, dir) in dirs.iter().enumerate() {
        let served = std::fs::read_to_string(dir.join("tls/tls.crt")).unwrap();
        let port = c.members[i].port;
        let der = presented(port, &cas).unwrap();
        assert!(
            served.contains(&pem_body(&der)),
            "node {i} serves its own certificate"
        );
    }

    // 2. Rotation, same CA, new key: served without a restart; after every connection between
    //    relay and origin is cut, the relay's new handshakes accept it and syncing goes on.
    let pid = c.pid(0);
    let rotated = ca1.leaf(LOOPBACK);
    install(&dirs[0], 2, &rotated);
    let took = until_presented(origin_port, &cas, &rotated).await;
    println!(
        "rotated certificate served after {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(c.pid(0), pid);
    assert!(alive(pid), "the origin process is the same one");
    let accepted = cut_point.accepted();
    cut_point.cut();
    let second = batch("tls-second", 10);
    writer.push(DB, &second).await;
    assert_readable(&reader, &second).await;
    assert!(cut_point.accepted() > accepted, "the relay reconnected");
    until_link(
        &relay,
        Duration::from_secs(20),
        "relay current after rotation",
        |l| l["state"] == "current" && l["lag"] == 0,
    )
    .await;

    // 3. CA rotation: the relay's caFile gains CA 2 (no restart), then the origin presents a
    //    certificate from CA 2. A relay that kept its first bundle would refuse it (unknown
    //    issuer) on the new connections after the cut.
    write_bundle(&relay_bundle, &[&ca1, &ca2]);
    let from_ca2 = ca2.leaf(LOOPBACK);
    install(&dirs[0], 3, &from_ca2);
    until_presented(origin_port, &cas, &from_ca2).await;
    assert!(
        presented(origin_port, &[&ca1]).is_err(),
        "CA 1 alone no longer verifies the origin"
    );
    assert_eq!(c.pid(0), pid);
    let accepted = cut_point.accepted();
    cut_point.cut();
    let third = batch("tls-third", 10);
    writer.push(DB, &third).await;
    assert_readable(&reader, &third).await;
    assert!(cut_point.accepted() > accepted, "the relay reconnected");
    until_link(
        &relay,
        Duration::from_secs(20),
        "relay current after the CA rotation",
        |l| l["state"] == "current" && l["lag"] == 0,
    )
    .await;
    assert_eq!(status(&relay).await["entries"], 40);
    assert!(alive(pid));
    println!(
        "TLS chain test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The base64 body of a DER certificate's PEM, as one line (to find it in a PEM file whatever its
/// line breaks).
fn pem_body(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(der)[..64].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_from_another_ca_or_for_another_name_is_refused_with_a_clear_reason() {
    let ca = Ca::new("syncrelay test CA");
    let stranger = Ca::new("some other CA");
    let mut c = Cluster::new(&["origin", "relay"]);
    c.scheme = "https";
    let (origin_dir, relay_dir) = (c.dir(0), c.dir(1));
    install(&origin_dir, 1, &stranger.leaf(LOOPBACK));
    install(&relay_dir, 1, &ca.leaf(LOOPBACK));
    let bundle = relay_dir.join("upstream-ca.pem");
    write_bundle(&bundle, &[&ca]);
    c.configure(0, &format!("role: origin\n{}", tls_config(&origin_dir)));
    c.configure(
        1,
        &format!(
            "role: relay\nupstreams: [{{name: origin, url: '{}', caFile: '{}'}}]\n\
             databases: [{{tenant: vectors, db: {DB}}}]\n{}",
            c.url(0),
            bundle.display(),
            tls_config(&relay_dir)
        ),
    );
    c.start(0);
    c.start(1);
    let cas = [&ca, &stranger];
    let mut writer = https_client(&c.url(0), &cas);
    writer.login("alice").await;
    let written = batch("tls-refused", 5);
    writer.push(DB, &written).await;
    let relay = https_client(&c.url(1), &cas);

    // Another CA: down, and the reason says the certificate is not trusted.
    until_link(
        &relay,
        Duration::from_secs(20),
        "down: unknown issuer",
        |l| {
            l["state"] == "down"
                && reason(l).contains("TLS: upstream certificate not trusted (unknown issuer")
        },
    )
    .await;
    let l = link(&relay).await;
    println!("another CA: {}", reason(&l));
    assert!(!reason(&l).contains("error sending request"), "{l}");
    assert_eq!(status(&relay).await["entries"], 0, "nothing stored");

    // The right CA, another name: down, and the reason names the address and the cert's names.
    install(&origin_dir, 2, &ca.leaf(&["other.example"]));
    until_link(
        &relay,
        Duration::from_secs(20),
        "down: not valid for the name",
        |l| {
            l["state"] == "down"
                && reason(l).contains("TLS: upstream certificate is not valid for 127.0.0.1")
                && reason(l).contains("other.example")
        },
    )
    .await;
    println!("another name: {}", reason(&link(&relay).await));
    assert_eq!(status(&relay).await["entries"], 0, "nothing stored");

    // A proper certificate: the link recovers and the entries come through.
    install(&origin_dir, 3, &ca.leaf(LOOPBACK));
    eventually("the 5 entries stored at the relay", || async {
        status(&relay).await["entries"] == 5
    })
    .await;
    until_link(&relay, Duration::from_secs(20), "current", |l| {
        l["state"] == "current" && l["lag"] == 0
    })
    .await;
}

#[tokio::test]
async fn a_client_silent_after_the_handshake_is_closed_by_the_header_timeout() {
    let ca = Ca::new("syncrelay test CA");
    let mut c = Cluster::new(&["origin"]);
    c.scheme = "https";
    let dir = c.dir(0);
    install(&dir, 1, &ca.leaf(LOOPBACK));
    c.configure(
        0,
        &format!(
            "role: origin\nlimits: {{headerTimeoutMs: 1000}}\n{}",
            tls_config(&dir)
        ),
    );
    c.start(0);
    let (_conn, mut socket) = handshake(c.members[0].port, &[&ca]).unwrap();
    // Whatever the server still sends (session tickets), then the close: within the deadline.
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "the server kept a silent TLS connection open"
        );
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}
