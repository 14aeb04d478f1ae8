//! The Kubernetes manifests, checked offline: the Helm chart renders (through
//! deploy/helm/render.py, since no helm binary exists here) with its defaults and with every
//! option turned, the kustomize base is exactly the chart's default rendering and
//! `kubectl kustomize` renders it, kubernetes-validate accepts every object against the API
//! schemas, the topology is what the issue asks for, the nodes get the same settings as the
//! compose file the compose test runs, and the example Secret's config passes
//! `berth config check`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::{berth_command, require_tool, run};
use serde::Deserialize;
use serde_norway::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn render(args: &[&str]) -> String {
    run(Command::new("python3").arg(root().join("deploy/helm/render.py")).args(args))
}

fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn has(objs: &[Value], kind: &str) -> bool {
    objs.iter().any(|o| o["kind"] == kind)
}

/// kubernetes-validate --strict on a rendering; only the ServiceMonitor (a CRD) has no schema.
fn validate(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("objects.yaml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new("kubernetes-validate").args(["--strict", "--quiet"]).arg(&f).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate:\n{said}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.contains("kind ServiceMonitor"), "unexpected: {line}");
    }
}

fn env_of(workload: &Value) -> Vec<(String, Value)> {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.get("value").cloned().unwrap_or(Value::Null)))
        .collect()
}

fn registry_names(env: &[(String, Value)]) -> BTreeSet<String> {
    env.iter().map(|(k, _)| k.clone()).filter(|k| k.starts_with("REGISTRY_")).collect()
}

#[test]
fn the_chart_and_the_kustomize_base_render_validate_and_agree() {
    if !require_tool("python3") || !require_tool("kubectl") || !require_tool("kubernetes-validate") || !require_tool("docker-compose") {
        return;
    }
    let defaults = render(&[]);
    let committed = std::fs::read_to_string(root().join("deploy/kubernetes/berth.yaml")).unwrap();
    assert_eq!(defaults, committed, "deploy/kubernetes/berth.yaml is stale: run deploy/helm/render.py > deploy/kubernetes/berth.yaml");
    validate(&defaults);
    let kustomized = run(Command::new("kubectl").arg("kustomize").arg(root().join("deploy/kubernetes")));
    validate(&kustomized);
    let objs = docs(&kustomized);
    assert_eq!(objs.len(), docs(&defaults).len());

    // Voters: a StatefulSet with ids from the ordinal, peers from the headless service, PVCs.
    let sts = find(&objs, "StatefulSet", "berth-voter");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(sts["spec"]["serviceName"], "berth-voters");
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    let venv = env_of(sts);
    let get = |env: &[(String, Value)], k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
    assert_eq!(get(&venv, "REGISTRY_BERTH_NODEID"), "ordinal");
    assert_eq!(
        get(&venv, "REGISTRY_BERTH_JOIN"),
        "berth-voter-0.berth-voters:5050,berth-voter-1.berth-voters:5050,berth-voter-2.berth-voters:5050"
    );
    assert_eq!(get(&venv, "REGISTRY_BERTH_ADVERTISEADDR"), "$(POD_NAME).berth-voters:5050");
    let headless = find(&objs, "Service", "berth-voters");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    // A drain never takes quorum.
    assert_eq!(find(&objs, "PodDisruptionBudget", "berth-voter")["spec"]["maxUnavailable"], 1);

    // Frontends: a Deployment scaled by an HPA of 2 to 5 replicas at 75% CPU.
    let dep = find(&objs, "Deployment", "berth-frontend");
    let fenv = env_of(dep);
    assert_eq!(get(&fenv, "REGISTRY_BERTH_ROLE"), "frontend");
    assert_eq!(get(&fenv, "REGISTRY_BERTH_PEERS"), get(&venv, "REGISTRY_BERTH_JOIN"));
    let hpa = find(&objs, "HorizontalPodAutoscaler", "berth-frontend");
    assert_eq!((hpa["spec"]["minReplicas"].clone(), hpa["spec"]["maxReplicas"].clone()), (Value::from(2), Value::from(5)));
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 75);
    for w in [sts, dep] {
        let c = &w["spec"]["template"]["spec"]["containers"][0];
        assert!(c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string(), "{c:?}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/debug/ready");
        assert_eq!(w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
        // Config and credentials come from the Secret.
        let vols = w["spec"]["template"]["spec"]["volumes"].as_sequence().unwrap();
        assert!(vols.iter().any(|v| v["secret"]["secretName"] == "berth"), "{vols:?}");
    }
    // Ingress to the frontends' Service, metrics from the debug port of every node.
    let ing = find(&objs, "Ingress", "berth");
    assert_eq!(ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"], "berth");
    assert_eq!(ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"], "0");
    let sm = find(&objs, "ServiceMonitor", "berth");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "debug");
    for svc in ["berth", "berth-voters"] {
        let ports = find(&objs, "Service", svc)["spec"]["ports"].as_sequence().unwrap().clone();
        assert!(ports.iter().any(|p| p["name"] == "debug"), "{svc} has no debug port");
    }
    assert!(has(&objs, "NetworkPolicy"));

    // The nodes get the settings the compose test runs (plus trusted proxies when set).
    // As docker-compose resolves the file (its `<<` merges included).
    let resolved = run(Command::new("docker-compose")
        .arg("-f")
        .arg(root().join("deploy/compose/docker-compose.yml"))
        .arg("config")
        .env("BERTH_CLUSTER_TOKEN", "x"));
    let compose: Value = serde_norway::from_str(&resolved).unwrap();
    let compose_env = |svc: &str| -> BTreeSet<String> {
        compose["services"][svc]["environment"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect()
    };
    let turned = render(&["--set", "trustedProxies=10.2.0.0/16"]);
    let tobjs = docs(&turned);
    assert_eq!(registry_names(&env_of(find(&tobjs, "StatefulSet", "berth-voter"))), compose_env("voter-2"));
    assert_eq!(registry_names(&env_of(find(&tobjs, "Deployment", "berth-frontend"))), compose_env("frontend-1"));

    // Every option turned: still valid, and each has its effect.
    let other = render(&[
        "--release",
        "reg",
        "--set",
        "voters.replicas=5",
        "--set",
        "voters.storageClassName=fast-ssd",
        "--set",
        "frontends.autoscaling.enabled=false",
        "--set",
        "frontends.replicas=3",
        "--set",
        "ingress.tlsSecretName=reg-tls",
        "--set",
        "serviceMonitor.enabled=false",
        "--set",
        "trustedProxies=10.2.0.0/16",
    ]);
    validate(&other);
    let objs = docs(&other);
    let sts = find(&objs, "StatefulSet", "reg-voter");
    assert_eq!(sts["spec"]["replicas"], 5);
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(get(&env_of(sts), "REGISTRY_BERTH_JOIN").as_str().unwrap().split(',').count(), 5);
    assert!(get(&env_of(sts), "REGISTRY_BERTH_JOIN").as_str().unwrap().starts_with("reg-voter-0.reg-voters:5050"));
    assert_eq!(get(&env_of(sts), "REGISTRY_BERTH_TRUSTEDPROXIES"), "10.2.0.0/16");
    assert_eq!(find(&objs, "Deployment", "reg-frontend")["spec"]["replicas"], 3);
    assert!(!has(&objs, "HorizontalPodAutoscaler") && !has(&objs, "ServiceMonitor"));
    assert_eq!(find(&objs, "Ingress", "reg")["spec"]["tls"][0]["secretName"], "reg-tls");
    let ingress_off = docs(&render(&["--set", "ingress.enabled=false"]));
    assert!(!has(&ingress_off, "Ingress"));
}

#[test]
fn the_renderer_refuses_what_it_does_not_implement() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: t\nversion: 0.1.0\n").unwrap();
    std::fs::write(chart.join("values.yaml"), "a: 1\n").unwrap();
    for (template, said) in [
        ("x: {{ include \"t.name\" . }}\n", "include is not supported"),
        ("x: {{ .Values.a | sha256sum }}\n", "unsupported function"),
        ("{{ if .Values.a }}\nx: 1\n", "missing {{ end }}"),
    ] {
        std::fs::write(chart.join("templates/t.yaml"), template).unwrap();
        let out = Command::new("python3").arg(root().join("deploy/helm/render.py")).arg(&chart).output().unwrap();
        assert!(!out.status.success(), "{template}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(said), "{template}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_example_secrets_config_passes_berth_config_check() {
    let example = std::fs::read_to_string(root().join("deploy/kubernetes/secret.example.yaml")).unwrap();
    let secret: Value = serde_norway::from_str(&example).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The Secret is mounted at /etc/berth: lay its keys out the same way here.
    let mount = dir.path().display().to_string();
    for (k, v) in secret["stringData"].as_mapping().unwrap() {
        let text = v.as_str().unwrap().replace("/etc/berth", &mount);
        std::fs::write(dir.path().join(k.as_str().unwrap()), text).unwrap();
    }
    let out = berth_command().args(["config", "check"]).arg(dir.path().join("config.yml")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
