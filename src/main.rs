//! The `tidepool` command line: `run`, `dev`, `status`, `stop`, `<operation>`, `version`, `help`
//! (the words are parsed in `cli.rs`; docs/cli.md is the user's page).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use cli::{Cli, Command, USAGE};

use tidepool::config::{Config, ConfigTree};
use tidepool::server::{self, RunOptions};
use tidepool_io::affinity_cpus;

fn default_root() -> PathBuf {
    if let Some(root) = std::env::var_os("ROOTPATH") {
        return PathBuf::from(root);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join("hdb")
}

/// Raises the open-file limit to its hard limit: every connection is a descriptor.
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on a stack struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn load_config(
    cli: &Cli,
    root: &std::path::Path,
    cpus: usize,
) -> Result<(Config, ConfigTree), String> {
    let mut tree = ConfigTree::defaults();
    let file = tidepool::config::file_path(root);
    if matches!(cli.command, Command::Run { .. })
        && !file.exists()
        && std::env::var_os("HDB_CONFIG").is_none()
    {
        clone_leader_configuration(&file);
    }
    if file.exists() {
        let source = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        tree.merge_file(&source, &file).map_err(|e| e.to_string())?;
    } else if std::env::var_os("HDB_CONFIG").is_some() {
        return Err(format!(
            "HDB_CONFIG names {}, which does not exist",
            file.display()
        ));
    }
    if cli.command == (Command::Run { dev: true }) {
        for (key, value) in [
            ("LOGGING_STDSTREAMS", "true"),
            ("LOGGING_LEVEL", "info"),
            ("AUTHENTICATION_AUTHORIZELOCAL", "true"),
            ("THREADS_COUNT", "1"),
        ] {
            tree.set_flat(key, tidepool::config::parse_override_value(value));
        }
    }
    tree.merge_env(std::env::vars());
    tree.merge_args(&cli.overrides);
    if let Some(cores) = cli.cores {
        tree.set_flat("THREADS_COUNT", serde_yaml::Value::from(cores as u64));
    }
    if !tree.errors.is_empty() {
        return Err(tree.errors.join("\ntidepool: "));
    }
    let config = Config::from_tree(&tree, root, cpus).map_err(|e| e.to_string())?;
    Ok((config, tree))
}

/// Clone node (docs/replication.md "Clone a node"): a first start with `HDB_LEADER_URL` writes
/// the leader's configuration, minus node-specific keys, as this node's file. A leader that
/// cannot be asked leaves the defaults (the data clone then logs why it cannot start either).
fn clone_leader_configuration(file: &std::path::Path) {
    match tidepool::replication::clone::leader_configuration_file() {
        None => {}
        Some(Ok(yaml)) => {
            let written = file
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(file, yaml));
            match written {
                Ok(()) => eprintln!(
                    "tidepool: configuration cloned from the leader (HDB_LEADER_URL) into {}",
                    file.display()
                ),
                Err(e) => eprintln!("tidepool: cannot write {}: {e}", file.display()),
            }
        }
        Some(Err(e)) => {
            eprintln!("tidepool: configuration not cloned from the leader (HDB_LEADER_URL): {e}")
        }
    }
}

/// Marks every descriptor but stdin, stdout and stderr close-on-exec, so no socket, database or
/// lock file of the stopped server lives on in the new image (a client connection left open
/// there would never be answered nor closed).
fn close_on_exec_all() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number only reads and sets its flags; a number that is
        // no longer open (the directory's own) fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The `restart` operation's second half: this binary executed again in this process, with the
/// arguments and environment it was started with. Returns only when that fails.
fn restart() -> ExitCode {
    use std::os::unix::process::CommandExt;
    // The path this binary was started from; a binary replaced there since is the one that
    // starts (Linux names the old one "<path> (deleted)"). Without a path, the running image.
    let exe = match std::env::current_exe() {
        Ok(exe) => {
            let shown = exe.to_string_lossy();
            match shown.strip_suffix(" (deleted)") {
                Some(path) if std::path::Path::new(path).exists() => path.into(),
                Some(_) => std::path::PathBuf::from("/proc/self/exe"),
                None => exe,
            }
        }
        Err(_) => std::path::PathBuf::from("/proc/self/exe"),
    };
    close_on_exec_all();
    let e = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("tidepool: restart: cannot execute {}: {e}", exe.display());
    ExitCode::from(1)
}

/// Allocations of 4 MiB or more are mapped on their own and given back to the system when freed.
/// glibc otherwise raises its mmap threshold after the first large free and keeps later blocks
/// of that size in the freeing thread's arena: every password-check thread would hold an
/// argon2id working area (19 MiB) for good, in an arena no core allocates from
/// (docs/security.md, "Password checks"). Setting the thresholds turns that adjustment off.
fn give_back_large_allocations() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

fn main() -> ExitCode {
    give_back_large_allocations();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match cli::parse_args(&args) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("tidepool: {e}\n\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    let root = cli.root.clone().unwrap_or_else(default_root);
    match &cli.command {
        Command::Version => {
            println!("tidepool {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Help(topic) => return cli::help(topic.as_deref()),
        Command::Status => return cli::status(&root),
        Command::Stop => return cli::stop(&root, cli.stop_timeout),
        Command::Operation(name) => {
            let ops = match load_config(&cli, &root, 1) {
                Ok((config, _)) => cli::local_ops_addr(&root, &config),
                Err(e) => {
                    eprintln!("tidepool: {e}");
                    return ExitCode::from(1);
                }
            };
            return cli::operation(name.as_str(), &cli.fields, ops);
        }
        Command::Run { .. } => {}
    }

    raise_nofile_limit();
    let available = affinity_cpus();
    let (config, tree) = match load_config(&cli, &root, available.len()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("tidepool: {e}");
            return ExitCode::from(1);
        }
    };
    let cpus: Vec<usize> = (0..config.threads)
        .map(|i| available[i % available.len()])
        .collect();
    // Lock the root before anything writes into it (the log included).
    if let Err(e) = std::fs::create_dir_all(&root) {
        eprintln!(
            "tidepool: cannot create root folder {}: {e}",
            root.display()
        );
        return ExitCode::from(1);
    }
    let lock = match server::RootLock::acquire(&root) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("tidepool: {e}");
            return ExitCode::from(1);
        }
    };
    let _log_guard = match tidepool::logging::init(&config.logging) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!(
                "tidepool: cannot open log {}: {e}",
                config.logging.path.display()
            );
            return ExitCode::from(1);
        }
    };
    for warning in &tree.warnings {
        tracing::warn!("{warning}");
    }
    if config.threads > available.len() {
        tracing::warn!(
            "{} cores requested but only {} CPUs in the affinity mask: executors share CPUs",
            config.threads,
            available.len()
        );
    }
    let opts = RunOptions {
        lock,
        app_dir: cli.app_dir,
        config,
        tree,
        io_driver: cli.io_driver,
        cpus,
        watch: cli.command == (Command::Run { dev: true }),
    };
    match server::run(opts) {
        Ok(())
            if tidepool::resource::RESTART_REQUESTED.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            // `run` has stopped everything and released the root lock; the log is flushed here.
            drop(_log_guard);
            restart()
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tidepool: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
