//! `boxoffice-processor`: parses configuration, starts tracing, builds the clients and runs the
//! booking processor or the payment processor (or audits one event). Everything else lives in
//! the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use boxoffice_avro::Codec;
use boxoffice_processors::booking::audit::verify_event;
use boxoffice_processors::booking::runtime::{BookingDeps, BookingSettings, run};
use boxoffice_processors::metrics::BookingMetrics;
use boxoffice_processors::payments::gateway::Gateway;
use boxoffice_processors::payments::runtime::{
    self as payments, PaymentDeps, PaymentMetrics, PaymentSettings,
};
use boxoffice_runtime::startup::{ServiceArgs, serve_health, shutdown_signal};
use boxoffice_store::inventory::InventoryStore;
use boxoffice_store::orders::OrderRows;
use boxoffice_store::payments::PaymentStore;
use boxoffice_store::schema::SchemaSettings;
use boxoffice_store::session::Session;
use boxoffice_store::watermarks::WatermarkStore;
use boxoffice_topics::names::TopicPrefix;
use clap::{Parser, Subcommand};
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "boxoffice-processor",
    version,
    about = "boxoffice's booking processor"
)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at startup; boxing would only obscure the clap definitions"
)]
enum Command {
    /// Run the booking processor: consume booking.commands, decide, produce, persist.
    Booking {
        #[command(flatten)]
        settings: BookingSettings,
        /// Where `/metrics` (OpenMetrics text), `/healthz` and `/readyz` answer.
        #[arg(
            long = "metrics-addr",
            env = "BOOKING_METRICS_ADDR",
            default_value = "127.0.0.1:9464"
        )]
        metrics_addr: SocketAddr,
    },
    /// Run the payment processor: consume payments.requests, charge and refund through the
    /// gateway, report outcomes to booking.commands.
    Payments {
        #[command(flatten)]
        settings: PaymentSettings,
        /// Where `/metrics` (OpenMetrics text), `/healthz` and `/readyz` answer.
        #[arg(
            long = "metrics-addr",
            env = "PAYMENTS_METRICS_ADDR",
            default_value = "127.0.0.1:9465"
        )]
        metrics_addr: SocketAddr,
    },
    /// Put the demo events on sale (idempotent: fixed ids, the processor ignores repeats).
    SeedDemo {
        #[command(flatten)]
        topic_prefix: TopicPrefix,
    },
    /// Re-fold an event's commands from the log and compare with ScyllaDB, with what
    /// booking.progress says was published, and with what fans were told (orders.events,
    /// availability); exit 1 on any violation of the inventory invariant or any difference.
    VerifyEvent {
        /// The event to audit.
        event_id: String,
        #[command(flatten)]
        topic_prefix: TopicPrefix,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.service.init_tracing();
    match start(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("boxoffice-processor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What every subcommand shares: the checked services, the CQL session and the codec.
struct Clients {
    service: ServiceArgs,
    session: Arc<Session>,
    schema: SchemaSettings,
    codec: Arc<Codec>,
}

async fn start(mut cli: Cli) -> anyhow::Result<ExitCode> {
    // Secrets and production checks first: they stop startup before anything is contacted.
    let dev = cli.service.dev.dev;
    if let Command::Payments { settings, .. } = &mut cli.command {
        settings.read_secrets(dev, |key| std::env::var(key).ok())?;
    }
    if dev {
        tracing::warn!("development mode (--dev / BOXOFFICE_DEV): development settings allowed");
    }
    let (session, schema) = cli.service.connect().await?;
    let clients = Clients {
        codec: Arc::new(Codec::new(&cli.service.registry)?),
        service: cli.service,
        session,
        schema,
    };
    match cli.command {
        Command::Booking {
            settings,
            metrics_addr,
        } => booking(clients, settings, metrics_addr).await,
        Command::Payments {
            settings,
            metrics_addr,
        } => payment_processor(clients, settings, metrics_addr).await,
        Command::SeedDemo { topic_prefix } => seed_demo(&clients, &topic_prefix).await,
        Command::VerifyEvent {
            event_id,
            topic_prefix,
            json,
        } => verify(&clients, &topic_prefix, &event_id, json).await,
    }
}

async fn inventory(clients: &Clients) -> anyhow::Result<Arc<InventoryStore>> {
    Ok(Arc::new(
        InventoryStore::new(Arc::clone(&clients.session), &clients.schema.keyspace).await?,
    ))
}

async fn booking(
    clients: Clients,
    settings: BookingSettings,
    metrics_addr: SocketAddr,
) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(BookingMetrics::default());
    let (served, ready) = (Arc::clone(&metrics), Arc::clone(&metrics));
    serve_health(
        metrics_addr,
        "--metrics-addr / BOOKING_METRICS_ADDR",
        move || served.render(),
        move || ready.readiness(),
    )
    .await?;
    let deps = BookingDeps {
        store: inventory(&clients).await?,
        order_rows: OrderRows::new(Arc::clone(&clients.session), &clients.schema.keyspace).await?,
        kafka: clients.service.kafka,
        codec: clients.codec,
        settings,
        metrics,
    };
    run(deps, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn payment_processor(
    clients: Clients,
    settings: PaymentSettings,
    metrics_addr: SocketAddr,
) -> anyhow::Result<ExitCode> {
    let gateway = settings.gateway().context("starting the payment gateway")?;
    if let Gateway::Provider(http) = &gateway {
        // A wrong URL or key stops startup here rather than failing every payment.
        http.check().await?;
        info!(provider_url = %settings.provider.url, "payment provider reachable; API key accepted");
    }
    let metrics = Arc::new(PaymentMetrics::default());
    let (served, ready) = (Arc::clone(&metrics), Arc::clone(&metrics));
    serve_health(
        metrics_addr,
        "--metrics-addr / PAYMENTS_METRICS_ADDR",
        move || served.render(),
        move || ready.readiness.check(),
    )
    .await?;
    let keyspace = &clients.schema.keyspace;
    let deps = PaymentDeps {
        store: Arc::new(PaymentStore::new(Arc::clone(&clients.session), keyspace).await?),
        watermarks: Arc::new(WatermarkStore::new(Arc::clone(&clients.session), keyspace).await?),
        kafka: clients.service.kafka,
        codec: clients.codec,
        gateway: Arc::new(gateway),
        policy: settings.provider.policy(),
        settings,
        metrics,
    };
    payments::run(deps, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn seed_demo(clients: &Clients, topic_prefix: &TopicPrefix) -> anyhow::Result<ExitCode> {
    let topic = topic_prefix.topics().commands;
    let producer: rdkafka::producer::FutureProducer =
        clients.service.kafka.durable_producer_config().create()?;
    for event in boxoffice_processors::booking::demo::events() {
        let command = boxoffice_avro::records::BookingCommand::EventUpserted(event.clone());
        let payload = clients.codec.encode_group(&topic, &command).await?;
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(event.event_id.as_bytes())
                    .payload(&payload),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| {
                anyhow::anyhow!("producing the demo event {}: {e}", event.event_id)
            })?;
        println!(
            "on sale: {} ({}, {} slots at {} {})",
            event.name, event.event_id, event.capacity, event.price_minor, event.currency
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    clients: &Clients,
    topic_prefix: &TopicPrefix,
    event_id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let topics = topic_prefix.topics();
    let store = inventory(clients).await?;
    let report = verify_event(
        &clients.service.kafka,
        &clients.codec,
        &store,
        &topics,
        event_id,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "event {} (partition {}): {} commands folded (last at offset {:?}); stored offset {:?}, published offset {:?}\n  capacity {} = available {} + held {} + sold {}; {} orders; {} order facts published, {} availability records, {} tickets issued",
            report.event_id,
            report.partition,
            report.commands,
            report.last_command_offset,
            report.stored_offset,
            report.published_offset,
            report.capacity,
            report.available,
            report.held,
            report.sold,
            report.orders,
            report.published_facts,
            report.availability_records,
            report.tickets_issued
        );
        for violation in &report.violations {
            println!("  VIOLATION: {violation}");
        }
        if !report.settled() {
            println!(
                "  note: the processor has not stored and published every command yet (it re-folds what the store lacks on its next restore)"
            );
        }
        println!(
            "{}",
            if report.ok() {
                "OK: never oversold; fans were told what the log gives; log, Kafka and ScyllaDB agree"
            } else {
                "FAILED"
            }
        );
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_bad_setting_is_refused_naming_the_flag() {
        let err = Cli::try_parse_from([
            "boxoffice-processor",
            "--bootstrap-servers",
            "nohost",
            "booking",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--bootstrap-servers"), "{err}");
    }

    #[test]
    fn bad_provider_settings_are_refused_naming_the_flag() {
        for (flag, value) in [
            ("--gateway", "stripe"),
            ("--provider-url", "ftp://api.example.com"),
            ("--provider-url", "not a url"),
            ("--provider-timeout", "0s"),
            ("--provider-pending-check", "soon"),
        ] {
            let err = Cli::try_parse_from(["boxoffice-processor", "payments", flag, value])
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{flag} {value}: {err}");
        }
        let ok = Cli::try_parse_from([
            "boxoffice-processor",
            "payments",
            "--gateway",
            "provider",
            "--provider-url",
            "http://127.0.0.1:9/",
            "--provider-pending-check",
            "2s",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
    }
}
