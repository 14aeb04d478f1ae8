//! The `berth` binary refuses bad configuration before it starts, naming the key.

use std::process::Command;

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

#[test]
fn invalid_config_value_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, "version: 0.1\nstorage:\n  delete:\n    enabled: sometimes\n").unwrap();
    let out = berth().args(["serve", "--config"]).arg(&cfg).arg("--data-dir").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage.delete.enabled"), "{err}");
}

#[test]
fn invalid_env_override_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("REGISTRY_HTTP_ADDR", "nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.addr"));
}

#[test]
fn an_auth_block_berth_cannot_honour_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    // A missing htpasswd file is not created with a default user: the start stops and says how.
    let missing = dir.path().join("no-such-htpasswd");
    std::fs::write(&cfg, format!("version: 0.1\nauth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n", missing.display())).unwrap();
    let out = berth().args(["serve", "--config"]).arg(&cfg).arg("--data-dir").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.htpasswd.path") && err.contains("htpasswd -Bc"), "{err}");
    assert!(!missing.exists());
    std::fs::write(&cfg, "version: 0.1\nauth:\n  silly:\n    realm: r\n    service: s\n").unwrap();
    let out = berth().args(["serve", "--config"]).arg(&cfg).arg("--data-dir").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.silly"));
    let out = berth()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        // Outside keys without the issuer they belong to.
        .env("REGISTRY_AUTH_TOKEN_REALM", "https://gitlab.example/jwt/auth")
        .env("REGISTRY_AUTH_TOKEN_JWKS", "/etc/gitlab/jwks.json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.token.service"));
}
