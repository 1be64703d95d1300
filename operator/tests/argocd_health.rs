//! The Argo CD health checks in `examples/argocd/`, run the way Argo CD's own checks are tested: each
//! `resource_customizations/syncrelay.io/<Kind>/health_test.yaml` case feeds a sample object to
//! `health.lua` and expects a `{status, message}`. The samples are real objects (they parse as the
//! operator's types and use only condition reasons the operator writes), and the scripts run in real
//! Lua interpreters: 5.1 (the dialect of gopher-lua, which Argo CD embeds) and 5.4. A missing
//! interpreter fails the test (`apt-get install lua5.1 lua5.4`; scripts/test.sh does it).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;
use syncrelay_operator::crd::{SyncChain, SyncNode};

const KINDS: [&str; 2] = ["SyncChain", "SyncNode"];
const INTERPRETERS: [&str; 2] = ["lua5.1", "lua5.4"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kind_dir(kind: &str) -> PathBuf {
    repo()
        .join("examples/argocd/resource_customizations/syncrelay.io")
        .join(kind)
}

#[derive(Deserialize)]
struct Cases {
    tests: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    health_status: Health,
    input_path: String,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Health {
    status: String,
    message: String,
}

fn cases(kind: &str) -> Vec<Case> {
    let path = kind_dir(kind).join("health_test.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str::<Cases>(&text)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .tests
}

fn sample(kind: &str, input: &str) -> Value {
    let path = kind_dir(kind).join(input);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// A Lua string literal holding `s` byte for byte (decimal escapes work in every Lua version).
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// The object as Argo CD hands it to a script: maps as tables, lists as 1-based arrays, null as nil.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => format!("{:?}", n.as_f64().expect("a JSON number")),
        },
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_value).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Runs `script` with the global `obj` set to `object`, as Argo CD does; returns (status, message).
fn run_check(lua: &str, script: &Path, object: &Value) -> Result<Health, String> {
    let harness = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_value(object),
        lua_string(script.to_str().expect("utf-8 path")),
    );
    let mut child = Command::new(lua)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{lua}: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(harness.as_bytes())
        .map_err(|e| format!("{lua} stdin: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{lua}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{lua} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;
    let (status, message) = text
        .split_once('\n')
        .ok_or_else(|| format!("{lua} printed {text:?}"))?;
    Ok(Health {
        status: status.into(),
        message: message.into(),
    })
}

fn require_interpreters() {
    for lua in INTERPRETERS {
        let ok = Command::new(lua)
            .arg("-v")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{lua} is not installed: the Argo CD health checks cannot be tested \
             (apt-get install lua5.1 lua5.4; scripts/test.sh installs them)"
        );
    }
}

#[test]
fn harness_passes_objects_through_unchanged() {
    require_interpreters();
    // A script that echoes what it was given: the conversion, not the check, is under test.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("echo.lua");
    std::fs::write(
        &script,
        "return {status = obj.metadata.name .. '/' .. obj.metadata.generation, \
         message = obj.status.conditions[2].message .. '|' .. tostring(obj.spec.paused) \
         .. '|' .. tostring(obj.spec.missing)}\n",
    )
    .unwrap();
    let object = serde_json::json!({
        "metadata": {"name": "a\"b\\c", "generation": 7},
        "spec": {"paused": false, "missing": null},
        "status": {"conditions": [{"message": "first"}, {"message": "tab\there, é"}]},
    });
    for lua in INTERPRETERS {
        let got = run_check(lua, &script, &object).unwrap();
        assert_eq!(
            got,
            Health {
                status: "a\"b\\c/7".into(),
                message: "tab\there, é|false|nil".into(),
            },
            "{lua}"
        );
    }
}

#[test]
fn health_checks_give_the_expected_status_and_message() {
    require_interpreters();
    let mut failures = Vec::new();
    let mut runs = 0;
    for kind in KINDS {
        let script = kind_dir(kind).join("health.lua");
        for case in cases(kind) {
            let object = sample(kind, &case.input_path);
            for lua in INTERPRETERS {
                runs += 1;
                match run_check(lua, &script, &object) {
                    Ok(got) if got == case.health_status => {}
                    Ok(got) => failures.push(format!(
                        "{kind} {} ({lua}): expected {:?}, got {:?}",
                        case.input_path, case.health_status, got
                    )),
                    Err(e) => failures.push(format!("{kind} {} ({lua}): {e}", case.input_path)),
                }
            }
        }
    }
    assert!(runs > 0, "no cases found");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_state_is_covered_for_each_kind() {
    for kind in KINDS {
        let states: BTreeSet<String> = cases(kind)
            .into_iter()
            .map(|c| c.health_status.status)
            .collect();
        for want in ["Healthy", "Progressing", "Degraded", "Suspended"] {
            assert!(states.contains(want), "{kind}: no case for {want}");
        }
    }
}

#[test]
fn samples_are_real_objects_with_reasons_the_operator_writes() {
    let mut controller = String::new();
    for entry in std::fs::read_dir(repo().join("operator/src/controller")).unwrap() {
        controller.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    for kind in KINDS {
        for case in cases(kind) {
            let object = sample(kind, &case.input_path);
            let parsed = match kind {
                "SyncNode" => serde_json::from_value::<SyncNode>(object.clone()).map(|_| ()),
                _ => serde_json::from_value::<SyncChain>(object.clone()).map(|_| ()),
            };
            if let Err(e) = parsed {
                panic!("{kind} {}: not a {kind}: {e}", case.input_path);
            }
            assert_eq!(object["kind"], kind, "{}", case.input_path);
            let conditions = object["status"]["conditions"].as_array();
            for c in conditions.into_iter().flatten() {
                let reason = c["reason"].as_str().expect("reason");
                assert!(
                    controller.contains(&format!("\"{reason}\"")),
                    "{kind} {}: the operator never writes reason {reason}",
                    case.input_path
                );
            }
        }
    }
}

#[test]
fn argocd_cm_carries_the_scripts_verbatim() {
    let path = repo().join("examples/argocd/argocd-cm.yaml");
    let cm: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for kind in KINDS {
        let key = format!("resource.customizations.health.syncrelay.io_{kind}");
        let embedded = cm["data"][&key]
            .as_str()
            .unwrap_or_else(|| panic!("argocd-cm.yaml has no {key}"));
        let script = std::fs::read_to_string(kind_dir(kind).join("health.lua")).unwrap();
        assert!(
            embedded == script,
            "argocd-cm.yaml {key} differs from {kind}/health.lua: regenerate it (examples/argocd/README.md)"
        );
    }
}
