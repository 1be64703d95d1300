//! The tenant directory (`directory::Directory::parse`, YAML): the node reads it from a file the
//! operator writes, and the operator builds that file from a user's Secret by parsing it into a
//! `DirectoryFile` and writing it back with `serde_yaml::to_string`.
//!
//! Invariants: parsing never panics; a `DirectoryFile` written back parses to an equal file (the
//! operator's round trip), and the node's verdict on the written file is its verdict on the original;
//! every key of a directory that builds is found again by its lookups.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use syncrelay_node::directory::{Directory, DirectoryFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz/directory.yaml");
    let parsed = Directory::parse(text, path);

    let Ok(file) = serde_yaml::from_str::<DirectoryFile>(text) else {
        assert!(parsed.is_err(), "a directory without a DirectoryFile");
        return;
    };
    let written = serde_yaml::to_string(&file).expect("a DirectoryFile writes as YAML");
    let again: DirectoryFile = serde_yaml::from_str(&written)
        .unwrap_or_else(|e| panic!("written directory does not parse: {e}\n{written}"));
    assert_eq!(
        again, file,
        "the YAML round trip changed the directory\n{written}"
    );
    let reparsed = Directory::parse(&written, path);
    assert_eq!(
        parsed.is_ok(),
        reparsed.is_ok(),
        "verdicts differ: {:?} / {:?}",
        parsed.as_ref().err(),
        reparsed.as_ref().err()
    );

    let Ok(directory) = parsed else { return };
    for (name, tenant_file) in &file.tenants {
        let id = name.to_ascii_lowercase();
        // Tenant names that differ only in case name one tenant: the last one read wins (see
        // RELIABILITY-fuzz.md), so only a name without such a twin is looked up.
        if file
            .tenants
            .keys()
            .filter(|other| other.to_ascii_lowercase() == id)
            .count()
            > 1
        {
            continue;
        }
        let tenant = directory.tenant(&id).expect("every tenant is listed");
        let users = tenant_file.admin.iter().chain(&tenant_file.users);
        for user in users {
            let found = tenant
                .by_signing_key(&user.signing_public_key)
                .expect("a listed key is found");
            assert!(found.username.eq_ignore_ascii_case(&user.username));
            assert!(!tenant.by_username(&user.username).is_empty());
        }
        for server in &tenant_file.trusted_servers {
            assert!(tenant.by_signing_key(&server.signing_public_key).is_some());
        }
        let _ = tenant.requires_v2(0);
    }
});
