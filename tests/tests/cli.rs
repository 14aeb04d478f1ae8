//! The `berth` command line as an operator meets it: `config check` before a start, and
//! output cut short by a pipe.

use std::process::Command;

use berth_tests::{berth_bin, berth_command, init_tracing, Berth};

#[test]
fn config_check_names_the_key_and_the_nearest_valid_one() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: &str| {
        let f = dir.path().join("config.yml");
        std::fs::write(&f, yaml).unwrap();
        let out = berth_command().args(["config", "check"]).arg(&f).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, said) = check("version: 0.1\nhttp:\n  addr: :5000\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/berth\n");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(": ok"), "{said}");
    // A Distribution key Berth does not use: a warning, still ok.
    let (code, said) = check("version: 0.1\nproxy:\n  remoteurl: https://registry-1.docker.io\n");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("warning: proxy"), "{said}");
    // A typo in Berth's own keys: refused, with the key meant.
    let (code, said) = check("version: 0.1\nberth:\n  nodid: 2\n");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("berth.nodid") && said.contains("did you mean berth.nodeid?"), "{said}");
    // A file the configuration names must exist, as at start.
    let (code, said) = check("version: 0.1\nauth:\n  htpasswd:\n    realm: r\n    path: /nonexistent/htpasswd\n");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("auth.htpasswd.path"), "{said}");
    let (code, said) = check("version: 0.1\nhttp:\n  tls:\n    certificate: /nonexistent/tls.crt\n    key: /nonexistent/tls.key\n");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("/nonexistent/tls.crt"), "{said}");
}

#[test]
fn output_cut_short_by_a_pipe_ends_quietly() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &[]);
    let out = Command::new("sh")
        .arg("-c")
        // `true` reads nothing and is gone long before the status comes back over gRPC, so
        // every write berth makes meets a closed pipe.
        .arg(format!("\"$0\" cluster status --node {} | true", node.grpc_addr))
        .arg(berth_bin())
        .env("REGISTRY_BERTH_CLUSTERTOKENFILE", berth_tests::cluster_token_file())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "{stderr}");
}
