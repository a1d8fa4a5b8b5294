//! The `flashmall` command: parses the command line and config, then calls
//! the library's or a component's `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashmall::config::Config;
use flashmall::demo::DemoOptions;
use flashmall_mesh::{MeshTls, Shutdown};
use flashmall_services::Service;

/// jemalloc: its per-thread caches spare the edge glibc's arena locks, met
/// when one thread frees what another allocated (Pingora's work stealing
/// moves requests between threads); see bench/RESULTS.md, "proxy".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "flashmall", version, about = "flash-sale e-commerce backend")]
struct Cli {
    /// Config file (TOML); without it, the defaults and FLASHMALL_* variables.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every component in one process (embedded stores by default).
    Up {
        /// Directory of the embedded stores (overrides data.dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Redis URL for the stock front (overrides redis.url).
        #[arg(long)]
        redis: Option<String>,
    },
    /// Runs a flash sale against a fresh local stack and checks the invariants.
    Demo(DemoOptions),
    /// The inventory engine.
    Engine {
        #[command(subcommand)]
        action: Option<EngineAction>,
    },
    /// The edge proxy.
    Proxy,
    /// One shop service on its own.
    Service {
        #[command(subcommand)]
        name: ServiceName,
    },
    /// The bench suite: seckill load, proxy overhead, the Redis reserve path.
    Bench {
        #[command(subcommand)]
        bench: flashmall::bench::Bench,
    },
    /// Loads and validates a config file, then prints the effective config.
    CheckConfig { file: PathBuf },
    /// Makes the existing account of EMAIL an admin, in the services store
    /// the config names (registering never makes an admin). With the
    /// embedded store, run it while flashmall is stopped.
    GrantAdmin { email: String },
}

#[derive(Subcommand)]
enum ServiceName {
    /// The auth and user service.
    Auth,
    /// The order service (and its expiry worker).
    Orders,
    /// The payment service (and its timer worker).
    Payments,
    /// The product catalogue service (and normal checkout's stock holds).
    Products,
    /// The cart service.
    Cart,
    /// The checkout service.
    Checkout,
}

#[derive(Subcommand)]
enum EngineAction {
    /// Serves the engine (the default).
    Run,
    /// Rebuilds the stock front from the ledger for every sale, prints the
    /// drift report, and exits (with the engine stopped).
    Reconcile,
}

impl Command {
    /// The service name of this process's spans: `flashmall-<name>`.
    fn name(&self) -> &'static str {
        match self {
            Command::Up { .. } => "up",
            Command::Demo(_) => "demo",
            Command::Engine { .. } => "engine",
            Command::Proxy => "proxy",
            Command::Service { name } => match name {
                ServiceName::Auth => "auth",
                ServiceName::Orders => "orders",
                ServiceName::Payments => "payments",
                ServiceName::Products => "products",
                ServiceName::Cart => "cart",
                ServiceName::Checkout => "checkout",
            },
            Command::Bench { .. } => "bench",
            Command::CheckConfig { .. } => "check-config",
            Command::GrantAdmin { .. } => "grant-admin",
        }
    }
}

fn env() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn main() -> ExitCode {
    // Failpoints for crash tests: FAILPOINTS=settle-before-commit=return.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Spans still batched leave before the process does.
    if let Err(e) = flashmall_mesh::trace::flush() {
        eprintln!("warning: {e}");
    }
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let mut config = Config::load(cli.config.as_deref(), env())?;
    // The demo prints its own table; the stack's logs (an access-log line
    // per request at info) stay quiet unless a level was chosen.
    let level_chosen = std::env::var_os("FLASHMALL_LOG__LEVEL").is_some() || cli.config.is_some();
    let level = match cli.command {
        Command::Demo(_) | Command::Bench { .. } if !level_chosen => "warn".to_owned(),
        _ => config.log.level.clone(),
    };
    let traces = config.log.traces(cli.command.name(), &env());
    let _logs = flashmall_mesh::telemetry::init_logs(config.log.format, &level, traces.as_ref())?;
    match cli.command {
        Command::Up { data_dir, redis } => {
            if let Some(dir) = data_dir {
                config.data.dir = dir;
            }
            if let Some(url) = redis {
                config.redis.url = url;
            }
            config.validate()?;
            flashmall::up::run(config).await?;
        }
        Command::Bench { bench } => {
            if !flashmall::bench::run(&bench).await? {
                eprintln!("error: the bench's checks failed (see the table)");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Demo(options) => {
            let report = flashmall::demo::run(&options).await?;
            println!("{}", report.table());
            if !report.invariants_hold() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Engine { action } => match action.unwrap_or(EngineAction::Run) {
            EngineAction::Run => {
                let shutdown = Shutdown::new();
                shutdown.trigger_on_signals();
                let mut settings = config.engine_settings(config.mesh.key()?);
                settings.tls = MeshTls::load_if_enabled(&config.mesh.tls).await?;
                flashmall_engine::run(settings, shutdown).await?;
            }
            EngineAction::Reconcile => {
                let settings = config.engine_settings(config.mesh.key_or_random()?);
                let reports = flashmall_engine::reconcile_offline(&settings).await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?
                );
                if reports.iter().any(|r| !r.conserved) {
                    return Ok(ExitCode::FAILURE);
                }
            }
        },
        Command::Proxy => {
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            let mut settings = config.proxy_settings(config.mesh.key()?, config.jwt_secret()?);
            settings.tls = MeshTls::load_if_enabled(&config.mesh.tls).await?;
            flashmall_proxy::run(settings, shutdown).await?;
        }
        Command::Service { name } => {
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            let key = config.mesh.key()?;
            let mut service = match name {
                ServiceName::Auth => Service::Auth(config.auth_settings(key, config.jwt_secret()?)),
                ServiceName::Orders => Service::Orders(config.orders_settings(key)),
                ServiceName::Payments => Service::Payments(config.payments_settings(key)),
                ServiceName::Products => Service::Products(config.products_settings(key)),
                ServiceName::Cart => Service::Cart(config.cart_settings(key)),
                ServiceName::Checkout => Service::Checkout(config.checkout_settings(key)),
            };
            service.common_mut().tls = MeshTls::load_if_enabled(&config.mesh.tls).await?;
            flashmall_services::run(service, shutdown).await?;
        }
        Command::GrantAdmin { email } => {
            let store = flashmall_services::open_store(&config.store, &config.data.dir).await?;
            match flashmall_services::auth::grant_admin(&*store, &email).await {
                Ok(true) => println!("{email} is now an admin (from its next login)"),
                Ok(false) => println!("{email} was an admin already"),
                Err(e) => return Err(e.message),
            }
        }
        Command::CheckConfig { file } => {
            let config = Config::load(Some(&file), env())?;
            // The effective configuration, secrets hidden: its output ends
            // up in terminals, CI logs and tickets.
            println!(
                "{}",
                toml::to_string_pretty(&config.redacted()).map_err(|e| e.to_string())?
            );
            eprintln!("{} is valid", file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
