//! The `ordersys` binary: parse the command line, load settings, start
//! logging, run one mode. Everything else lives in the library.

use clap::Parser;
use ordersys::cli::{Cli, Command};
use ordersys::logging;
use ordersys::settings::{LogFormat, Settings};
use ordersys::{Application, Mode};
use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Probe(args) = &cli.command {
        logging::init(LogFormat::Text);
        return probe(args.url.as_deref());
    }
    if let Command::Load(args) = &cli.command {
        logging::init(LogFormat::Text);
        return load(args);
    }
    if let Command::CheckHistory(args) = &cli.command {
        logging::init(LogFormat::Text);
        return check_history(args);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("ordersys: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(settings.log.format);
    match run(cli.command, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, mut settings: Settings) -> anyhow::Result<()> {
    let modes = match command {
        Command::Migrate => return migrate(&settings),
        Command::Probe(_) | Command::Load(_) | Command::CheckHistory(_) => {
            unreachable!("handled before settings are loaded")
        }
        Command::Token(args) => return token(&settings, &args),
        Command::Orders(args) => vec![(
            Mode::Orders,
            args.bind.unwrap_or_else(|| default(Command::ORDERS_BIND)),
        )],
        Command::Products(args) => vec![(
            Mode::Products,
            args.bind.unwrap_or_else(|| default(Command::PRODUCTS_BIND)),
        )],
        Command::Worker(args) => {
            if let Some(replicas) = args.replicas {
                settings.worker.replicas = replicas.into();
            }
            vec![(Mode::Worker, args.bind)]
        }
        Command::All(args) => {
            if let Some(replicas) = args.replicas {
                settings.worker.replicas = replicas.into();
            }
            vec![
                (Mode::Products, args.products_bind),
                (Mode::Orders, args.orders_bind),
                (Mode::Worker, args.worker_bind),
            ]
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let apps = modes
            .into_iter()
            .map(|(mode, bind)| Application::build(mode, &settings, bind))
            .collect::<anyhow::Result<Vec<_>>>()?;
        ordersys::app::run_together(apps).await
    })
}

/// `ordersys probe`: exit 0 when the URL (or any default health port) answers 2xx.
fn probe(url: Option<&str>) -> ExitCode {
    let urls: Vec<String> = match url {
        Some(url) => vec![url.to_owned()],
        None => ["8081", "8000", "8082"]
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}/startedz"))
            .collect(),
    };
    let mut last = String::new();
    for url in &urls {
        match ordersys::probe::get_status(url) {
            Ok(status) if (200..300).contains(&status) => return ExitCode::SUCCESS,
            Ok(status) => last = format!("{url} answered {status}"),
            Err(e) => last = e,
        }
    }
    eprintln!("ordersys probe: {last}");
    ExitCode::FAILURE
}

/// A runtime for the client commands (`load`, `check-history`).
fn client_runtime(command: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("ordersys {command}: {e}");
            ExitCode::from(2)
        })
}

/// `ordersys check-history`: the findings on standard output; exit 1 when
/// the history does not hold, 2 when it cannot be read.
fn check_history(args: &ordersys::cli::CheckHistoryArgs) -> ExitCode {
    let runtime = match client_runtime("check-history") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(ordersys::load::check_recorded(&args.options(), &args.file)) {
        Ok(checked) => {
            println!("{}", checked.describe());
            if checked.holds() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ordersys check-history: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `ordersys load`: the live view on standard error, the summary on
/// standard output; exit 1 when the run fails its thresholds.
fn load(args: &ordersys::cli::LoadArgs) -> ExitCode {
    let options = args.options();
    let runtime = match client_runtime("load") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(ordersys::load::run(&options)) {
        Ok(report) => {
            print!(
                "{}",
                ordersys::load::stats::summary(
                    &report.stats,
                    report.span,
                    report.elapsed,
                    options.rate
                )
            );
            if let Some(v) = &report.verified {
                println!("{}", v.describe());
            }
            if let Some(checked) = &report.checked {
                println!("{}", checked.describe());
            }
            if report.passed(&options) {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "ordersys load: failed (error rate {:.3}% > {:.3}%, or the stock or history check failed)",
                    report.stats.error_rate() * 100.0,
                    options.max_error_rate * 100.0
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ordersys load: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `ordersys token`: a token on stdout, nothing else.
fn token(settings: &Settings, args: &ordersys::cli::TokenArgs) -> anyhow::Result<()> {
    let minter = ordersys::auth::Minter::new(&settings.auth, args.private_key.as_deref())?;
    let token = minter
        .mint(
            &args.subject,
            &args.scope,
            std::time::Duration::from_secs(args.ttl),
        )
        .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

fn default(addr: &str) -> SocketAddr {
    addr.parse().expect("default bind addresses are valid")
}

fn migrate(settings: &Settings) -> anyhow::Result<()> {
    use anyhow::Context;
    ordersys::db::migrate::ensure_database(&settings.database.url)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("cannot create the database")?;
    let mut conn = ordersys::db::connect(&settings.database, "ordersys-migrate")
        .context("cannot connect to PostgreSQL")?;
    let applied = ordersys::db::migrate::run_pending(&mut conn)
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    if applied.is_empty() {
        log::info!("database schema is up to date");
    } else {
        log::info!("applied migrations: {}", applied.join(", "));
    }
    let roles = settings.migrate.role_passwords();
    if !roles.is_empty() {
        let done = ordersys::db::migrate::set_role_passwords(&mut conn, &roles)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        log::info!("passwords set for the roles {}", done.join(", "));
    }
    if settings.migrate.declare_topology {
        let mut connection = ordersys::amqp::connect(&settings.amqp, "ordersys-migrate")
            .context("cannot connect to RabbitMQ")?;
        ordersys::amqp::declare_topology(&mut connection, &settings.amqp)
            .context("cannot declare the RabbitMQ topology")?;
        let _ = connection.close();
        log::info!("RabbitMQ topology declared");
    }
    Ok(())
}
