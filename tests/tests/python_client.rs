//! The official Python `kubernetes` client (tests/python/client.py)
//! against the agent's API: list, create, get, both patch types, chunked
//! list, watch and delete, as an application would use them.

use std::path::PathBuf;
use std::process::Command;

use knode_tests::api::{python, Api};

#[test]
fn the_python_client_lists_creates_patches_watches_and_deletes() {
    let Some(python) = python() else { return };
    let api = Api::start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(api.kubeconfig())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("ok\n"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        api.agent.log()
    );
    eprint!("{stdout}");
}
