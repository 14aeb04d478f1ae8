//! Three voters over gRPC on loopback: bootstrap, join as learners, promote, replicate,
//! refuse a reused node id, lose the leader and elect a new one with nothing lost, and let
//! the old leader rejoin as a follower. Stateless frontends, node removal, and fast failure
//! without a quorum.

use std::time::{Duration, Instant};

use berth_tests::{
    berth_cluster, frontend, init_tracing, push_image, random_bytes, voter_cluster, wait_for_leader, wait_until_leader_is, Berth,
    Registry, TestCa,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_replicate_and_survive_the_leader() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // One site: every node shares the blob store.
    let shared = dir.path().join("blobs");
    let shared_env = shared.to_str().unwrap().to_string();
    let start = |id: &str, bootstrap: &str| {
        Berth::start(
            &dir.path().join(format!("node{id}")),
            None,
            &[
                ("REGISTRY_BERTH_NODEID", id),
                ("REGISTRY_BERTH_BOOTSTRAP", bootstrap),
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &shared_env),
            ],
        )
    };
    tracing::info!("bootstrap node 1, start nodes 2 and 3 empty");
    let mut nodes = vec![start("1", "true"), start("2", "false"), start("3", "false")];
    let first = nodes[0].grpc_addr.clone();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        berth_cluster(&["add-learner", "--node", &first, "--id", &(i + 1).to_string(), "--addr", &n.grpc_addr]);
    }
    berth_cluster(&["change-membership", "--node", &first, "--voters", "1,2,3"]);
    let status = berth_cluster(&["status", "--node", &nodes[2].grpc_addr]);
    assert!(status.contains("leader 1"), "{status}");
    assert_eq!(status.matches(" voter ").count(), 3, "{status}");

    tracing::info!("a reused node id is refused");
    let out = berth_tests::berth_command()
        .args(["cluster", "add-learner", "--node", &first, "--id", "2", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never reused"));

    tracing::info!("a push through a follower is forwarded, and visible at once on another follower");
    let via_follower = random_bytes(500, 3000);
    let d = Registry::new(&nodes[1].url).push_blob("cluster/app", &via_follower).await.unwrap();
    assert_eq!(Registry::new(&nodes[2].url).get_blob("cluster/app", &d).await.unwrap(), via_follower);

    tracing::info!("one upload: POST on node 1, PATCH on node 2, PUT on node 3");
    let data = random_bytes(501, 200_000);
    let (r1, r2, r3) = (Registry::new(&nodes[0].url), Registry::new(&nodes[1].url), Registry::new(&nodes[2].url));
    let r = r1.http.post(r1.abs("/v2/cluster/spread/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = r2.http.patch(r2.abs(&loc)).body(data[..120_000].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let digest = berth_proto::Digest::sha256_of(&data);
    let r = r3.http.put(r3.abs(&format!("{loc}&digest={digest}"))).body(data[120_000..].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(r1.get_blob("cluster/spread", &digest).await.unwrap(), data);

    tracing::info!("pushes on the leader replicate");
    let reg = Registry::new(&nodes[0].url);
    let mut pushed = Vec::new();
    for i in 0..20u64 {
        let data = random_bytes(i, 1000);
        pushed.push((reg.push_blob("cluster/app", &data).await.unwrap(), data));
    }

    tracing::info!("kill the leader; a new one is elected among 2 and 3");
    nodes[0].kill9();
    let new_leader = wait_for_leader(&nodes[1].grpc_addr, Some(1)).await;
    assert!(new_leader == 2 || new_leader == 3);
    let reg = Registry::new(&nodes[new_leader as usize - 1].url);
    for (d, data) in &pushed {
        assert_eq!(&reg.get_blob("cluster/app", d).await.unwrap(), data, "acknowledged push lost");
    }
    let after = random_bytes(100, 1000);
    let d = reg.push_blob("cluster/app", &after).await.unwrap();

    tracing::info!("the old leader rejoins as a follower and catches up");
    nodes[0].restart();
    // Right after restart it may still report its own stale term; it must converge.
    let seen = wait_until_leader_is(&nodes[0].grpc_addr, new_leader).await;
    assert_eq!(seen, Some(new_leader), "the old leader did not follow the new one");
    let reg = Registry::new(&nodes[new_leader as usize - 1].url);
    assert_eq!(reg.get_blob("cluster/app", &d).await.unwrap(), after);
    let status = berth_cluster(&["status", "--node", &nodes[0].grpc_addr]);
    println!("{status}");
    assert!(!status.contains("unreachable"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontends_serve_everything_and_removed_ids_stay_retired() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut voters = voter_cluster(dir.path(), 3, &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
    let mut fe = frontend(dir.path(), "fe1", &voters, &[]);
    let via_fe = Registry::new(&fe.url);

    tracing::info!("a push through the frontend is visible at once on a follower, and the reverse");
    let m = push_image(&via_fe, "fe/app", "v1", 10).await;
    assert_eq!(Registry::new(&voters[2].url).get_manifest("fe/app", "v1").await.unwrap(), (reqwest::StatusCode::OK, m));
    let m2 = push_image(&Registry::new(&voters[1].url), "fe/app", "v2", 20).await;
    assert_eq!(via_fe.get_manifest("fe/app", "v2").await.unwrap(), (reqwest::StatusCode::OK, m2.clone()));
    let tags: serde_json::Value = via_fe.http.get(via_fe.abs("/v2/fe/app/tags/list")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2"]));

    tracing::info!("an upload started on the frontend finishes on a voter (the HTTP secret is the cluster's)");
    let data = random_bytes(30, 70_000);
    let r = via_fe.http.post(via_fe.abs("/v2/fe/spread/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let v = Registry::new(&voters[1].url);
    let digest = berth_proto::Digest::sha256_of(&data);
    let r = v.http.put(v.abs(&format!("{loc}&digest={digest}"))).body(data.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(via_fe.get_blob("fe/spread", &digest).await.unwrap(), data);

    tracing::info!("a follower's metrics show the members, the commit index and forwarded requests");
    let metrics = reqwest::get(format!("{}/metrics", voters[1].debug_url.as_ref().unwrap())).await.unwrap().text().await.unwrap();
    for id in 1..=3 {
        assert!(metrics.contains(&format!("berth_raft_member{{node_id=\"{id}\",voter=\"true\"}} 1")), "{metrics}");
    }
    assert!(metrics.lines().any(|l| l.starts_with("berth_raft_commit_index ") && !l.ends_with(" 0")), "{metrics}");
    assert!(metrics.contains("berth_raft_leader_id 1"), "{metrics}");

    tracing::info!("the leader dies; the frontend finds the new one by itself");
    voters[0].kill9();
    let new_leader = wait_for_leader(&voters[1].grpc_addr, Some(1)).await;
    let m3 = push_image(&via_fe, "fe/app", "v3", 40).await;
    assert_eq!(via_fe.get_manifest("fe/app", "v3").await.unwrap(), (reqwest::StatusCode::OK, m3));
    assert_eq!(via_fe.get_manifest("fe/app", "v2").await.unwrap(), (reqwest::StatusCode::OK, m2));

    tracing::info!("frontends come and go: a new one serves at once");
    fe.kill9();
    let fe2 = frontend(dir.path(), "fe2", &voters, &[]);
    assert_eq!(Registry::new(&fe2.url).get_blob("fe/spread", &digest).await.unwrap(), data);

    tracing::info!("remove the dead node 1; its id is retired");
    let alive = &voters[new_leader as usize - 1].grpc_addr.clone();
    let out = berth_cluster(&["remove", "--node", alive, "--id", "1"]);
    assert!(out.contains("removed"), "{out}");
    let status = berth_cluster(&["status", "--node", alive]);
    assert_eq!(status.matches(" voter ").count(), 2, "{status}");
    assert!(!status.contains("node 1 "), "{status}");
    let out = berth_tests::berth_command()
        .args(["cluster", "add-learner", "--node", alive, "--id", "1", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed") && err.contains("never reused"), "{err}");
    tracing::info!("two voters still commit");
    push_image(&Registry::new(&fe2.url), "fe/app", "v4", 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_fast_with_503_and_recover() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut voters = voter_cluster(dir.path(), 3, &[]);
    let fe = frontend(dir.path(), "fe", &voters, &[]);
    let leader_reg = Registry::new(&voters[0].url);
    leader_reg.push_blob("q/app", b"before").await.unwrap();

    voters[1].kill9();
    voters[2].kill9();
    // Wait (on the condition, not a clock) until the leader knows it has lost its majority:
    // a write is then refused at once. Probes use other content than the write checked below.
    let mut knows = false;
    let probe = format!("/v2/q/app/blobs/uploads/?digest={}", berth_proto::Digest::sha256_of(b"probe"));
    for _ in 0..100 {
        let r = leader_reg.http.post(leader_reg.abs(&probe)).body(b"probe".to_vec()).timeout(Duration::from_millis(500)).send().await;
        if r.is_ok_and(|r| r.status() == 503) {
            knows = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(knows, "the leader never noticed it lost its majority");
    for url in [&voters[0].url, &fe.url] {
        let reg = Registry::new(url);
        let t = Instant::now();
        let r = reg
            .http
            .post(reg.abs(&format!("/v2/q/app/blobs/uploads/?digest={}", berth_proto::Digest::sha256_of(b"during"))))
            .body(b"during".to_vec())
            .send()
            .await
            .unwrap();
        let took = t.elapsed();
        assert_eq!(r.status(), 503, "{url}");
        assert!(r.headers().contains_key("retry-after"), "{url}: no Retry-After");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
        assert!(took < Duration::from_secs(3), "{url}: a write without quorum took {took:?}");
        // Reads need the quorum as well (they are linearizable): they fail just as fast.
        let t = Instant::now();
        let r = reg.http.get(reg.abs("/v2/q/app/tags/list")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(t.elapsed() < Duration::from_secs(3), "{url}: a read without quorum took {:?}", t.elapsed());
    }

    tracing::info!("one voter back: the majority returns and writes succeed again");
    voters[1].restart();
    let mut ok = false;
    for _ in 0..50 {
        if leader_reg.push_blob("q/app", b"after").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "writes did not resume once a majority was back");
    assert_eq!(Registry::new(&fe.url).get_blob("q/app", &berth_proto::Digest::sha256_of(b"before")).await.unwrap(), b"before");
    let during = berth_proto::Digest::sha256_of(b"during");
    let r = leader_reg.http.head(leader_reg.abs(&format!("/v2/q/app/blobs/{during}"))).send().await.unwrap();
    assert_eq!(r.status(), 404, "a write refused with 503 must not appear later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_mutual_tls_and_refuse_strangers() {
    init_tracing();
    if !berth_tests::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let (cert, key) = ca.issue("node");
    let (ca_s, cert_s, key_s) = (ca.cert.display().to_string(), cert.display().to_string(), key.display().to_string());
    let tls = [("REGISTRY_BERTH_TLS_CA", ca_s.as_str()), ("REGISTRY_BERTH_TLS_CERTIFICATE", &cert_s), ("REGISTRY_BERTH_TLS_KEY", &key_s)];
    let voters = voter_cluster(dir.path(), 3, &tls);
    let fe = frontend(dir.path(), "fe", &voters, &tls);

    tracing::info!("replication, forwarding and frontend reads all run over mutual TLS");
    let m = push_image(&Registry::new(&fe.url), "tls/app", "v1", 70).await;
    assert_eq!(Registry::new(&voters[2].url).get_manifest("tls/app", "v1").await.unwrap(), (reqwest::StatusCode::OK, m));
    let status = berth_tests::berth_cluster_env(&["status", "--node", &voters[1].grpc_addr], &tls);
    assert!(status.contains("leader 1") && !status.contains("unreachable"), "{status}");

    tracing::info!("a client without a certificate, or with one from another CA, is refused");
    let plain = berth_tests::berth_command().args(["cluster", "status", "--node", &voters[0].grpc_addr]).output().unwrap();
    assert!(!plain.status.success(), "plaintext admin call succeeded");
    let rogue = TestCa::new(dir.path(), "rogue");
    let (rcert, rkey) = rogue.issue("intruder");
    let (rcert_s, rkey_s) = (rcert.display().to_string(), rkey.display().to_string());
    let out = berth_tests::berth_command()
        .args(["cluster", "status", "--node", &voters[0].grpc_addr])
        .envs([("REGISTRY_BERTH_TLS_CA", &ca_s), ("REGISTRY_BERTH_TLS_CERTIFICATE", &rcert_s), ("REGISTRY_BERTH_TLS_KEY", &rkey_s)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a certificate from another CA was accepted");

    tracing::info!("a frontend with a stranger's certificate gets no metadata");
    let rogue_env = [("REGISTRY_BERTH_TLS_CA", ca_s.as_str()), ("REGISTRY_BERTH_TLS_CERTIFICATE", &rcert_s), ("REGISTRY_BERTH_TLS_KEY", &rkey_s)];
    let bad_fe = frontend(dir.path(), "bad-fe", &voters, &rogue_env);
    let r = Registry::new(&bad_fe.url).get_manifest("tls/app", "v1").await.unwrap();
    assert_eq!(r.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_10000_writes_catches_up_by_snapshot() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 2,000 entries or so (each voter waits a little longer than the last),
    // so 10,000 writes purge the log several times over whatever the stagger.
    let mut voters = voter_cluster(dir.path(), 3, &[("REGISTRY_BERTH_SNAPSHOTLOGS", "2000")]);
    voters[2].kill9();

    tracing::info!("10,000 writes while node 3 is down: the leader snapshots and purges its log");
    let reg = Registry::new(&voters[0].url);
    let first = reg.push_blob("snap/app", b"first").await.unwrap();
    let writers: Vec<_> = (0..16u64)
        .map(|w| {
            let reg = reg.clone();
            tokio::spawn(async move {
                for i in 0..625u64 {
                    reg.push_blob("snap/app", format!("blob {w} {i}").as_bytes()).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let status = berth_cluster(&["status", "--node", &voters[0].grpc_addr]);
    println!("{status}");

    tracing::info!("node 3 restarts; the entries it lacks are gone from every log, so it gets the snapshot");
    voters[2].restart();
    let mut caught_up = false;
    for _ in 0..200 {
        let s = berth_cluster(&["status", "--node", &voters[2].grpc_addr]);
        if let Some(line) = s.lines().find(|l| l.starts_with("node 3 ")) {
            let applied: u64 = line.split_whitespace().find_map(|f| f.strip_prefix("applied=")).unwrap().parse().unwrap();
            if applied >= 10_000 {
                caught_up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up, "node 3 did not catch up");
    let log = std::fs::read_to_string(&voters[2].log).unwrap();
    assert!(log.contains("snapshot installed"), "node 3 caught up without a snapshot");
    let r3 = Registry::new(&voters[2].url);
    assert_eq!(r3.get_blob("snap/app", &first).await.unwrap(), b"first");
    let last = berth_proto::Digest::sha256_of(b"blob 15 624");
    assert_eq!(r3.get_blob("snap/app", &last).await.unwrap(), b"blob 15 624");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_steps_down_when_it_wakes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let voters = voter_cluster(dir.path(), 3, &[]);
    let old = Registry::new(&voters[0].url);
    let mut acked = Vec::new();
    for i in 0..10u64 {
        let data = random_bytes(900 + i, 500);
        acked.push((old.push_blob("pause/app", &data).await.unwrap(), data));
    }

    tracing::info!("SIGSTOP the leader: it can neither send nor answer, as if cut off");
    let signal = |sig: &str, pid: u32| assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    signal("-STOP", voters[0].pid());
    let new_leader = wait_for_leader(&voters[1].grpc_addr, Some(1)).await;
    let majority = Registry::new(&voters[new_leader as usize - 1].url);
    for i in 0..10u64 {
        let data = random_bytes(950 + i, 500);
        acked.push((majority.push_blob("pause/app", &data).await.unwrap(), data));
    }

    tracing::info!("SIGCONT: the old leader learns of the newer term, follows, and serves every push");
    signal("-CONT", voters[0].pid());
    let seen = wait_until_leader_is(&voters[0].grpc_addr, new_leader).await;
    assert_eq!(seen, Some(new_leader), "the old leader did not step down");
    for (d, data) in &acked {
        assert_eq!(&old.get_blob("pause/app", d).await.unwrap(), data, "acknowledged push lost");
    }
    old.push_blob("pause/app", b"after the pause").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_joined_is_not_ready_until_it_is() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let debug = [("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")];
    let first = Berth::start(&dir.path().join("node1"), None, &debug);
    let mut env = vec![("REGISTRY_BERTH_NODEID", "2"), ("REGISTRY_BERTH_BOOTSTRAP", "false")];
    env.extend_from_slice(&debug);
    let second = Berth::start(&dir.path().join("node2"), None, &env);
    let http = reqwest::Client::new();
    let status = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry, r.text().await.unwrap())
        }
    };

    tracing::info!("not a member yet: /v2/ and /debug/ready say 503, with an OCI error body");
    let (code, retry, body) = status(format!("{}/v2/", second.url)).await;
    assert_eq!(code, 503, "{body}");
    assert!(retry, "Retry-After");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("not reached the cluster"), "{body}");
    assert_eq!(status(format!("{}/debug/ready", second.debug_url.as_ref().unwrap())).await.0, 503);
    assert_eq!(status(format!("{}/v2/", first.url)).await.0, 200);
    assert_eq!(status(format!("{}/debug/ready", first.debug_url.as_ref().unwrap())).await.0, 200);

    tracing::info!("once added, it is ready within a refresh");
    berth_cluster(&["add-learner", "--node", &first.grpc_addr, "--id", "2", "--addr", &second.grpc_addr]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(format!("{}/v2/", second.url)).await.0 != 200 {
        assert!(Instant::now() < deadline, "still not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(format!("{}/debug/ready", second.debug_url.as_ref().unwrap())).await.0, 200);
    assert_eq!(status(format!("{}/debug/health", second.debug_url.as_ref().unwrap())).await.0, 200);
}

/// The voters of a compose file or a StatefulSet: the same `berth.join` list everywhere,
/// started in any order, and no operator step. Node 1 founds the cluster; the others add
/// themselves; a node that restarts half-way finishes; a node 1 whose data was lost joins
/// the cluster that exists instead of founding a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_named_in_join_add_themselves_in_any_order() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("blobs").to_str().unwrap().to_string();
    let grpcs: Vec<String> = (0..3)
        .map(|_| berth_tests::ports::free_addr())
        .collect();
    let join = grpcs.join(",");
    let start = |id: usize| {
        let id_s = id.to_string();
        Berth::start(
            &dir.path().join(format!("node{id}")),
            None,
            &[
                ("REGISTRY_BERTH_NODEID", &id_s),
                ("REGISTRY_BERTH_GRPCADDR", &grpcs[id - 1]),
                ("REGISTRY_BERTH_JOIN", &join),
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &shared),
            ],
        )
    };
    let voters_seen = |grpc: &str| {
        let out = berth_tests::berth_command()
            .args(["cluster", "status", "--node", grpc])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text.matches(" voter ").count(), text)
    };
    let wait_voters = |grpc: String, n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (count, text) = voters_seen(&grpc);
            if count == n {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{n} voters not seen at {grpc}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    tracing::info!(
        "nodes 3 and 2 start first and wait; node 1 founds the cluster; all become voters"
    );
    let mut n3 = start(3);
    let n2 = start(2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut n1 = start(1);
    let status = wait_voters(n3.grpc_addr.clone(), 3).await;
    assert!(status.contains("leader 1"), "{status}");
    let data = random_bytes(900, 5000);
    let d = Registry::new(&n3.url)
        .push_blob("join/app", &data)
        .await
        .unwrap();
    assert_eq!(
        Registry::new(&n2.url)
            .get_blob("join/app", &d)
            .await
            .unwrap(),
        data
    );

    tracing::info!("a voter that restarts stays one voter (no second add)");
    n3.restart();
    wait_voters(n3.grpc_addr.clone(), 3).await;
    assert_eq!(voters_seen(&n2.grpc_addr).1.matches("\nnode ").count(), 3);

    tracing::info!(
        "node 1 loses its data: it joins the existing cluster instead of founding another"
    );
    n1.kill9();
    wait_for_leader(&n2.grpc_addr, Some(1)).await;
    std::fs::remove_dir_all(&n1.data_dir).unwrap();
    n1.restart();
    let log = std::fs::read_to_string(&n1.log).unwrap();
    assert!(log.contains("joining it instead of founding one"), "{log}");
    assert_eq!(
        log.matches("initializing a new single-voter cluster")
            .count(),
        1,
        "founded only on its first start:\n{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(got) = Registry::new(&n1.url).get_blob("join/app", &d).await {
            assert_eq!(got, data);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 never served the cluster's data"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (count, text) = voters_seen(&n1.grpc_addr);
    assert_eq!(count, 3, "{text}");
    assert!(!text.contains("leader 0"), "{text}");
    let more = random_bytes(901, 5000);
    let d2 = Registry::new(&n1.url)
        .push_blob("join/app", &more)
        .await
        .unwrap();
    assert_eq!(
        Registry::new(&n3.url)
            .get_blob("join/app", &d2)
            .await
            .unwrap(),
        more
    );
}

/// Replacing the cluster CA without downtime, by rolling restarts: every node first trusts
/// both CAs (a PEM bundle in `berth.tls.ca`), then presents a certificate from the new CA,
/// then trusts only the new one. The cluster keeps a leader and takes pushes throughout;
/// afterwards a certificate from the old CA is refused by every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_is_replaced_with_rolling_restarts() {
    init_tracing();
    if !berth_tests::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (TestCa::new(dir.path(), "old"), TestCa::new(dir.path(), "new"));
    let (old_cert, old_key) = old.issue("node-old");
    let (new_cert, new_key) = new.issue("node-new");
    let both = dir.path().join("both-ca.pem");
    let bundle = format!("{}{}", std::fs::read_to_string(&old.cert).unwrap(), std::fs::read_to_string(&new.cert).unwrap());
    std::fs::write(&both, bundle).unwrap();
    let tls = |ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path| -> Vec<(String, String)> {
        vec![
            ("REGISTRY_BERTH_TLS_CA".to_string(), ca.display().to_string()),
            ("REGISTRY_BERTH_TLS_CERTIFICATE".to_string(), cert.display().to_string()),
            ("REGISTRY_BERTH_TLS_KEY".to_string(), key.display().to_string()),
        ]
    };
    let first = tls(&old.cert, &old_cert, &old_key);
    let first_ref: Vec<(&str, &str)> = first.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut voters = voter_cluster(dir.path(), 3, &first_ref);
    push_image(&Registry::new(&voters[0].url), "ca/app", "start", 90).await;

    let phases = [
        ("trust both CAs", tls(&both, &old_cert, &old_key)),
        ("present the new CA's certificates", tls(&both, &new_cert, &new_key)),
        ("trust only the new CA", tls(&new.cert, &new_cert, &new_key)),
    ];
    let mut pushed = 0u64;
    for (phase, env) in &phases {
        for idx in [2usize, 1, 0] {
            tracing::info!(phase, node = idx + 1, "rolling restart");
            voters[idx].terminate();
            for (k, v) in env {
                voters[idx].env.retain(|(name, _)| name != k);
                voters[idx].env.push((k.clone(), v.clone()));
            }
            voters[idx].restart();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = reqwest::get(format!("{}/v2/", voters[idx].url)).await.is_ok_and(|r| r.status() == 200);
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} not ready during '{phase}'", idx + 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            pushed += 1;
            let m = push_image(&Registry::new(&voters[(idx + 1) % 3].url), "ca/app", &format!("p{pushed}"), 90 + pushed).await;
            assert_eq!(Registry::new(&voters[idx].url).get_manifest("ca/app", &format!("p{pushed}")).await.unwrap(), (reqwest::StatusCode::OK, m));
        }
        let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let status = berth_tests::berth_cluster_env(&["status", "--node", &voters[0].grpc_addr], &env_ref);
        assert!(status.matches(" voter ").count() == 3 && !status.contains("unreachable"), "after '{phase}':\n{status}");
    }

    tracing::info!("a certificate from the old CA is refused everywhere now");
    for v in &voters {
        let out = berth_tests::berth_command()
            .args(["cluster", "status", "--node", &v.grpc_addr])
            .envs(tls(&both, &old_cert, &old_key))
            .output()
            .unwrap();
        assert!(!out.status.success(), "node at {} accepted the old CA's certificate", v.grpc_addr);
    }
}

/// A removed voter stops campaigning and says so, whether it was removed while it ran (it
/// applies the membership without itself) or while it was down (it learns from the others);
/// brought back with an empty data directory and a new id, it joins again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_stops_campaigning_says_so_and_can_come_back_under_a_new_id() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut voters = voter_cluster(dir.path(), 4, &[]);
    let leader = voters[0].grpc_addr.clone();
    let said = |node: &Berth| std::fs::read_to_string(&node.log).unwrap().contains("this node has been removed from the cluster");
    let wait_said = |node: &Berth| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !said(node) {
            assert!(Instant::now() < deadline, "node at {} never said it was removed:\n{}", node.url, std::fs::read_to_string(&node.log).unwrap());
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    tracing::info!("node 4 is removed while it runs");
    berth_cluster(&["remove", "--node", &leader, "--id", "4"]);
    wait_said(&voters[3]);

    tracing::info!("node 3 is removed while it is down, then starts again on its old data");
    voters[2].kill9();
    berth_cluster(&["remove", "--node", &leader, "--id", "3"]);
    voters[2].restart();
    wait_said(&voters[2]);
    let term_of = |grpc: &str| -> u64 {
        let s = berth_tests::berth_command().args(["cluster", "status", "--node", grpc]).output().unwrap();
        let s = String::from_utf8_lossy(&s.stdout).to_string();
        s.lines().find_map(|l| l.strip_prefix("term ")).and_then(|t| t.trim().parse().ok()).unwrap_or_else(|| panic!("{s}"))
    };
    let (t3, t1) = (term_of(&voters[2].grpc_addr), term_of(&leader));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(term_of(&voters[2].grpc_addr), t3, "node 3 still campaigns");
    assert_eq!(term_of(&leader), t1, "the cluster's term moved");
    let status = berth_cluster(&["status", "--node", &leader]);
    assert_eq!(status.matches(" voter ").count(), 2, "{status}");
    push_image(&Registry::new(&voters[1].url), "removed/app", "v1", 5).await;

    tracing::info!("the machine of node 3 comes back empty, as node 5");
    voters[2].kill9();
    std::fs::remove_dir_all(&voters[2].data_dir).unwrap();
    voters[2].env.retain(|(k, _)| k != "REGISTRY_BERTH_NODEID");
    voters[2].env.push(("REGISTRY_BERTH_NODEID".into(), "5".into()));
    voters[2].restart();
    berth_cluster(&["add-learner", "--node", &leader, "--id", "5", "--addr", &voters[2].grpc_addr]);
    berth_cluster(&["change-membership", "--node", &leader, "--voters", "1,2,5"]);
    let status = berth_cluster(&["status", "--node", &voters[2].grpc_addr]);
    assert_eq!(status.matches(" voter ").count(), 3, "{status}");
    let m = push_image(&Registry::new(&voters[0].url), "removed/app", "v2", 6).await;
    assert_eq!(Registry::new(&voters[2].url).get_manifest("removed/app", "v2").await.unwrap(), (reqwest::StatusCode::OK, m));
}

/// The sum over `nodes` of `berth_manifest_bodies_total{body="<body>"}`.
async fn manifest_bodies(nodes: &[&Berth], body: &str) -> u64 {
    let mut total = 0;
    for n in nodes {
        let text = reqwest::get(format!("{}/metrics", n.debug_url.as_ref().unwrap())).await.unwrap().text().await.unwrap();
        let prefix = format!("berth_manifest_bodies_total{{body=\"{body}\"}} ");
        total += text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse::<u64>().unwrap());
    }
    total
}

/// Manifest bodies are content (issue 10): the leader leaves a body out of the log entry
/// (protocol 3) only once every member has said it reads such entries. While one has not (a
/// member down since before anyone asked, as in a rolling upgrade), pushes are not held back:
/// their entries carry the body as before. Either way every node serves every manifest whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_bodies_leave_the_log_once_every_member_reads_protocol_3() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = voter_cluster(dir.path(), 3, &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
    let status = berth_cluster(&["status", "--node", &nodes[0].grpc_addr]);
    assert_eq!(status.matches(&format!("protocol={}", berth_proto::PROTOCOL)).count(), 3, "{status}");
    tracing::info!("node 3 goes down before the leader has asked it anything");
    nodes[2].kill9();
    let reg = Registry::new(&nodes[1].url);
    let inline = push_image(&reg, "upgrade/app", "inline", 1).await;
    assert_eq!(manifest_bodies(&[&nodes[0], &nodes[1]], "entry").await, 1, "the body must stay in the entry while node 3 is unknown");
    assert_eq!(manifest_bodies(&[&nodes[0], &nodes[1]], "store").await, 0);

    tracing::info!("node 3 is back: later bodies go to the blob store only");
    nodes[2].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pushed = Vec::new();
    while manifest_bodies(&[&nodes[0], &nodes[1], &nodes[2]], "store").await == 0 {
        assert!(Instant::now() < deadline, "no manifest left the log after node 3 came back");
        let tag = format!("stored-{}", pushed.len());
        pushed.push((tag.clone(), push_image(&reg, "upgrade/app", &tag, 10 + pushed.len() as u64).await));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = pushed.last().unwrap().clone();
    for n in &nodes {
        let reg = Registry::new(&n.url);
        for (tag, body) in [("inline".to_string(), &inline), (stored.0.clone(), &stored.1)] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (s, got) = reg.get_manifest("upgrade/app", &tag).await.unwrap();
                if s == 200 {
                    assert_eq!(&got, body, "{tag} from {}", n.url);
                    break;
                }
                assert!(Instant::now() < deadline, "{tag} from {}: {s}", n.url);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
