//! `berth`: a distributed OCI container registry.

use std::path::PathBuf;

use berth_node::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "A distributed, replicated OCI container registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node. With no configuration: a single voter on 0.0.0.0:5000 keeping
    /// its data under ./berth-data.
    #[command(after_help = "Examples:\n  berth serve\n  berth serve --config /etc/berth/config.yml\n  REGISTRY_HTTP_ADDR=127.0.0.1:5000 berth serve --data-dir /var/lib/berth")]
    Serve {
        /// Docker Distribution style config.yml (also accepted as the positional argument).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Config file, as `registry serve config.yml` takes it.
        #[arg(conflicts_with = "config")]
        config_file: Option<PathBuf>,
        /// Where Raft data and (by default) blobs are kept.
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Administer a cluster through any member's gRPC address.
    Cluster {
        /// Config file whose `berth.tls` (cluster CA, certificate, key) secures the calls.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Sites: what each holds and lacks.
    Geo {
        /// Config file whose `berth.tls` and cluster token secure the calls.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: GeoAction,
    },
    /// Bootstrap and recover identity (users, passwords, tokens, the token signing key)
    /// through a voter's gRPC address and the cluster token.
    Admin {
        /// Config file (its `berth.tls` and `berth.clustertokenfile` secure the calls).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// gRPC address of a voter.
        #[arg(long, global = true, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// TLS helpers.
    Tls {
        #[command(subcommand)]
        action: TlsAction,
    },
    /// Make a data directory the first voter of a new cluster holding a backup made by
    /// `berth cluster backup` (node id and address from the config). Then start it and add
    /// voters.
    #[command(after_help = "Example:\n  berth restore --from berth-2026-11-29.backup --data-dir /var/lib/berth --config /etc/berth/config.yml")]
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The new node's data directory (it must not hold Raft data).
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: PathBuf,
        /// The config the node will run with (its berth.nodeid and gRPC address).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Find garbage the online collector cannot see (content in the blob store that nothing
    /// links or holds; with --delete-untagged, unused blob links and untagged manifests from
    /// before this build), queue it, and sweep what has waited --review-after. Runs against
    /// the running cluster and the blob store of the config; nothing stops.
    #[command(after_help = "Examples:\n  berth garbage-collect --config /etc/berth/config.yml --dry-run\n  berth garbage-collect --config /etc/berth/config.yml --delete-untagged --review-after 0s")]
    GarbageCollect {
        /// Config file: the blob store, the cluster token and `berth.tls`, `gc.reviewafter`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// gRPC address of a voter.
        #[arg(long, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
        /// Report what would be collected; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also collect every manifest no tag, index or subject keeps (images pushed by digest
        /// only, too) and every blob link no manifest uses.
        #[arg(long)]
        delete_untagged: bool,
        /// Sweep what has waited this long (`0s`: everything now, as Distribution does; a push
        /// in flight may then be refused and retried). Default: the config's gc.reviewafter.
        #[arg(long)]
        review_after: Option<String>,
    },
    /// GET a plain-HTTP URL and succeed on a 2xx: a health check for images without curl.
    #[command(after_help = "Example:\n  berth probe http://127.0.0.1:5001/debug/ready")]
    Probe {
        /// The URL (`http://HOST:PORT/PATH`).
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a configuration (with the `REGISTRY_*` variables of the environment applied)
    /// without starting: every key and value, and the files it names (htpasswd, token
    /// certificates, TLS). Exits 0 when `berth serve` would accept it, 2 when not.
    #[command(after_help = "Example:\n  berth config check /etc/berth/config.yml")]
    Check {
        /// The config.yml to check.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TlsAction {
    /// Write a self-signed certificate and key for a first try with TLS (not for production:
    /// clients must be told to trust it, e.g. docker's certs.d/HOST:PORT/ca.crt).
    #[command(after_help = "Example:\n  berth tls self-signed --host registry.local --host 127.0.0.1 --cert tls.crt --key tls.key")]
    SelfSigned {
        /// Names and IP addresses the certificate is for.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where the certificate (PEM) goes.
        #[arg(long)]
        cert: PathBuf,
        /// Where the key (PEM, mode 0600) goes.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Make a user; the password is read from stdin.
    #[command(after_help = "Example:\n  echo 'a long password' | berth admin create-user --username alice --admin")]
    CreateUser {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Make an administrator.
        #[arg(long)]
        admin: bool,
        /// No password: the user logs in with tokens only.
        #[arg(long)]
        no_password: bool,
    },
    /// Set a user's password (read from stdin), e.g. a locked-out administrator's.
    #[command(after_help = "Example:\n  echo 'a new long password' | berth admin set-password --username root")]
    SetPassword {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Also make (true) or unmake (false) an administrator.
        #[arg(long)]
        admin: Option<bool>,
    },
    /// Make a personal access token and print it (shown this once).
    #[command(after_help = "Example:\n  berth admin create-token --username root --scopes api --expires-at 2030-01-01")]
    CreateToken {
        /// Whose.
        #[arg(long)]
        username: String,
        /// A name for people.
        #[arg(long, default_value = "admin-cli")]
        name: String,
        /// Comma-separated: api, read_registry, write_registry.
        #[arg(long, value_delimiter = ',', default_value = "api")]
        scopes: Vec<String>,
        /// Expiry date (ISO 8601).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Sign new registry tokens with a fresh key (the old one verifies until its tokens expire).
    ///
    /// Berth makes a P-256 key (ES256) unless given one: `--key-file` takes a PKCS#8 PEM
    /// private key, RSA of 2048 bits and up (RS256) or P-256, for example one made with
    /// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out registry.key`.
    #[command(after_help = "Examples:\n  berth admin rotate-signing-key\n  berth admin rotate-signing-key --key-file registry.key")]
    RotateSigningKey {
        /// A PKCS#8 PEM private key to sign with instead of a new P-256 key.
        #[arg(long)]
        key_file: Option<std::path::PathBuf>,
    },
    /// List users.
    #[command(after_help = "Example:\n  berth admin users --node 10.0.0.1:5050")]
    Users,
}

#[derive(Subcommand)]
enum GeoAction {
    /// Print every site: its nodes, how much content it holds and lacks, whether its backfill
    /// is done, and how long the oldest content it lacks has waited.
    #[command(after_help = "Example:\n  berth geo status --node 127.0.0.1:5050")]
    Status {
        /// gRPC address of any member.
        #[arg(long, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash what the node's site is recorded as holding (all of it, or --percent of it)
    /// and repair what is missing or damaged from another site.
    #[command(after_help = "Example:\n  berth geo verify --node 10.0.2.1:5050 --percent 10")]
    Verify {
        /// gRPC address of a node of the site to verify.
        #[arg(long, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
        /// Share of the content to check (a random sample), 1 to 100.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
        percent: u32,
        /// Report only; repair nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make this stopped node of a secondary site the one voter of a new cluster that
    /// continues from the state it had applied (the primary site is lost). The old cluster's
    /// nodes cannot reach the new one until they are demoted.
    #[command(after_help = "Example:\n  berth geo promote --config /etc/berth/config.yml --data-dir /var/lib/berth")]
    Promote {
        /// The node's data directory.
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Move this stopped node's Raft data aside (kept, not deleted) so that it joins a
    /// promoted cluster as a learner: an old primary coming back, or another node of the
    /// promoted site.
    #[command(after_help = "Example:\n  berth geo demote --data-dir /var/lib/berth")]
    Demote {
        /// The node's data directory.
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Print the leader, the term, and every member's log, commit and applied index.
    #[command(after_help = "Example:\n  berth cluster status --node 127.0.0.1:5050")]
    Status {
        /// gRPC address of any member.
        #[arg(long, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
    },
    /// Add a node as a learner (it replicates but does not vote) and wait for it to catch up.
    #[command(after_help = "Example:\n  berth cluster add-learner --node 10.0.0.1:5050 --id 2 --addr 10.0.0.2:5050")]
    AddLearner {
        /// gRPC address of any member.
        #[arg(long, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
        /// The new node's id (never reused).
        #[arg(long)]
        id: u64,
        /// The new node's gRPC address.
        #[arg(long)]
        addr: String,
    },
    /// Set the voters (learners become voters; voters left out become learners).
    #[command(after_help = "Example:\n  berth cluster change-membership --node 10.0.0.1:5050 --voters 1,2,3")]
    ChangeMembership {
        /// gRPC address of any member.
        #[arg(long, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
        /// Comma-separated node ids.
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
    },
    /// Write a backup of the registry metadata (repositories, tags, manifests, identity) as
    /// the voter at --node has applied it. Copy the blob store afterwards.
    #[command(after_help = "Example:\n  berth cluster backup --node 10.0.0.1:5050 --out berth-$(date +%F).backup")]
    Backup {
        /// gRPC address of a voter.
        #[arg(long, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Remove a node (a voter is first taken out of the voters). Its id is never reused.
    #[command(after_help = "Example:\n  berth cluster remove --node 10.0.0.1:5050 --id 3")]
    Remove {
        /// gRPC address of any member.
        #[arg(long, default_value = berth_node::DEFAULT_GRPC_ADDR)]
        node: String,
        /// The id of the node to remove.
        #[arg(long)]
        id: u64,
    },
}

fn admin(config: Option<PathBuf>, node: String, action: AdminAction) -> std::process::ExitCode {
    use berth_node::admin_cli::IdentityAdmin;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async {
        let cfg = Config::load(config.as_deref(), std::env::vars())?.0;
        let a = IdentityAdmin::connect(&cfg, &node).await?;
        match action {
            AdminAction::CreateUser { username, admin, no_password } => a.create_user(&username, admin, no_password).await,
            AdminAction::SetPassword { username, admin } => a.set_password(&username, admin).await,
            AdminAction::CreateToken { username, name, scopes, expires_at } => {
                a.create_token(&username, &name, &scopes, expires_at.as_deref()).await
            }
            AdminAction::RotateSigningKey { key_file } => a.rotate_signing_key(key_file.as_deref()).await,
            AdminAction::Users => {
                a.users();
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn self_signed(hosts: &[String], cert: &std::path::Path, key: &std::path::Path) -> std::process::ExitCode {
    let write = || -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (c, k) = berth_node::tls::self_signed(hosts)?;
        std::fs::write(cert, c)?;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(key)?;
        f.write_all(k.as_bytes())?;
        println!("wrote {} and {} for {}", cert.display(), key.display(), hosts.join(", "));
        Ok(())
    };
    match write() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn garbage_collect(config: Option<PathBuf>, node: String, dry_run: bool, delete_untagged: bool, review_after: Option<String>) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async {
        let cfg = Config::load(config.as_deref(), std::env::vars())?.0;
        let review_after = review_after.as_deref().map(berth_node::config::parse_duration).transpose()?;
        let opts = berth_node::gc::collect::Options { dry_run, delete_untagged, review_after };
        let summary = berth_node::gc::collect::run(&cfg, &node, opts).await?;
        print!("{}", summary.report(dry_run));
        anyhow::Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn cluster(config: Option<PathBuf>, action: ClusterAction) -> std::process::ExitCode {
    use berth_node::cluster_cli::Admin;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async {
        let cfg = Config::load(config.as_deref(), std::env::vars())?.0;
        let admin = Admin::new(&cfg)?;
        match action {
            ClusterAction::Status { node } => admin.status(&node).await,
            ClusterAction::AddLearner { node, id, addr } => admin.add_learner(&node, id, &addr).await,
            ClusterAction::ChangeMembership { node, voters } => admin.change_membership(&node, &voters).await,
            ClusterAction::Remove { node, id } => admin.remove(&node, id).await,
            ClusterAction::Backup { node, out } => admin.backup(&node, &out).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a command that works on a stopped node's data directory.
fn run_command(name: &str, run: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth {name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn geo_status(config: Option<PathBuf>, node: String, json: bool) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async {
        let cfg = Config::load(config.as_deref(), std::env::vars())?.0;
        let admin = berth_node::cluster_cli::Admin::new(&cfg)?;
        berth_node::geo::status::print(&admin, &node, json).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn config_check(file: &std::path::Path) -> std::process::ExitCode {
    let check = || -> anyhow::Result<Vec<String>> {
        let (cfg, unknown) = Config::load(Some(file), std::env::vars())?;
        berth_node::check_files(&cfg)?;
        Ok(unknown)
    };
    match check() {
        Ok(unknown) => {
            for key in &unknown {
                println!("warning: {key}: not a key Berth uses; ignored");
            }
            println!("{}: ok", file.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e:#}", file.display());
            std::process::ExitCode::from(2)
        }
    }
}

fn main() -> std::process::ExitCode {
    // glibc gives threads their own malloc arenas (up to 8 per core) and keeps what each one
    // frees. Applying and snapshot exports run on tokio's blocking threads, so with a million
    // tags the heap held 640 MB mostly freed; with two arenas it stays near the state
    // database's cache (BENCHMARKS.md, "Metadata at scale").
    // SAFETY: a malloc tuning call made before any thread starts.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // A command whose output is cut short (`berth cluster status | head`) ends quietly,
        // as other command-line tools do, instead of panicking on the closed pipe. The
        // server keeps SIGPIPE ignored: a client closing its socket is an error to handle.
        // SAFETY: setting a signal's disposition to its default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let (config, config_file, data_dir) = match cli.command {
        Command::Serve { config, config_file, data_dir } => (config, config_file, data_dir),
        Command::Cluster { config, action } => return cluster(config, action),
        Command::Geo { config, action: GeoAction::Status { node, json } } => return geo_status(config, node, json),
        Command::Geo { config, action: GeoAction::Promote { data_dir } } => {
            return run_command("geo promote", || berth_node::geo::promote::promote(&Config::load(config.as_deref(), std::env::vars())?.0, &data_dir))
        }
        Command::Geo { config, action: GeoAction::Verify { node, percent, dry_run } } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            return run_command("geo verify", || {
                rt.block_on(async {
                    let cfg = Config::load(config.as_deref(), std::env::vars())?.0;
                    let admin = berth_node::cluster_cli::Admin::new(&cfg)?;
                    berth_node::geo::verify::cli(&admin, &node, percent, !dry_run).await
                })
            });
        }
        Command::Geo { config: _, action: GeoAction::Demote { data_dir } } => return run_command("geo demote", || berth_node::geo::promote::demote(&data_dir)),
        Command::Admin { config, node, action } => return admin(config, node, action),
        Command::Tls { action: TlsAction::SelfSigned { hosts, cert, key } } => return self_signed(&hosts, &cert, &key),
        Command::Config { action: ConfigAction::Check { file } } => return config_check(&file),
        Command::Restore { from, data_dir, config } => {
            let restored = Config::load(config.as_deref(), std::env::vars()).and_then(|(cfg, _)| berth_node::backup::restore(&cfg, &data_dir, &from));
            return match restored {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth restore: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Command::GarbageCollect { config, node, dry_run, delete_untagged, review_after } => {
            return garbage_collect(config, node, dry_run, delete_untagged, review_after)
        }
        Command::Probe { url, timeout } => {
            return match berth_node::probe::probe(&url, std::time::Duration::from_secs(timeout)) {
                Ok(_) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth probe: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    };
    let file = config.or(config_file);
    let (cfg, unknown) = match Config::load(file.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    berth_node::logging::init(&cfg);
    for key in unknown {
        tracing::warn!(key, "unknown configuration key ignored");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(berth_node::serve(berth_node::ServeOptions { config: cfg, data_dir })) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
