//! RabbitMQ: connecting (with TCP_NODELAY), declaring the topology of
//! docs/contract.md §4, publishing with confirms, and telling broker errors apart.
//!
//! amiquip is synchronous; it is only used from the relay and consumer
//! threads, never from an async task. It does not set TCP_NODELAY, which
//! made publish-then-confirm round trips wait on Nagle's algorithm (about
//! 30 messages/s); the socket is opened here with nodelay set and handed to
//! amiquip.

use crate::messages::{
    stock_queue, stock_routing_key, ALERTS_EXCHANGE, ALERTS_QUEUE, DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE, ORDER_EVENTS_DEAD_LETTER_EXCHANGE, ORDER_EVENTS_DEAD_LETTER_QUEUE,
    ORDER_EVENTS_EXCHANGE, ORDER_EVENTS_QUEUE, ORDER_EVENTS_ROUTING_KEY, PRODUCT_EXCHANGE,
    PRODUCT_QUEUE, PRODUCT_ROUTING_KEY,
};
use crate::settings::AmqpSettings;
use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Confirm, Connection, ConnectionOptions,
    ConnectionTuning, ExchangeDeclareOptions, ExchangeType, FieldTable, Publish,
    QueueDeclareOptions,
};
use crossbeam_channel::Receiver;
use std::collections::BTreeSet;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's bound on a silent broker, under the heartbeat's (which
/// gives up after two heartbeats without a byte, 20 s at the default 10 s,
/// with a clearer error): sent data unacknowledged this long, or a quiet
/// connection whose keepalive probes (after 10 s, every 5 s) go unanswered,
/// ends the connection. It matters when heartbeats are off (0), or when
/// they are longer than this.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a publisher (the relay, a consumer's dead letters) waits for
/// the broker's confirms of one window before it counts it as not sent.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("bad amqp.url: {0}")]
    Url(String),
    #[error("cannot reach RabbitMQ at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("RabbitMQ: {0}")]
    Broker(#[from] amiquip::Error),
    #[error("the broker rejected (nack) {0} published message(s)")]
    Nacked(usize),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker returned {count} message(s) it could not route ({reason})")]
    Returned { count: usize, reason: String },
    #[error("the connection to RabbitMQ was closed")]
    Closed,
    #[error("no broker of amqp.url could be reached: {0}")]
    NoBroker(String),
}

/// Where and how to connect, parsed from `amqp.url`: `amqp://` in the
/// clear, `amqps://` over TLS (port 5671 by default), verified against the
/// system's trusted certificates plus the PEM file of the `cacertfile`
/// query parameter, as RabbitMQ's URI spec names it.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    username: String,
    password: String,
    vhost: String,
    tls: Option<TlsOptions>,
}

#[derive(Debug, Clone, Default)]
struct TlsOptions {
    cacertfile: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"***")
            .field("vhost", &self.vhost)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, AmqpError> {
        let parsed = url::Url::parse(url).map_err(|e| AmqpError::Url(e.to_string()))?;
        let tls = match parsed.scheme() {
            "amqp" => None,
            "amqps" => Some(TlsOptions {
                cacertfile: parsed
                    .query_pairs()
                    .find(|(k, _)| k == "cacertfile")
                    .map(|(_, v)| v.into_owned()),
            }),
            other => {
                return Err(AmqpError::Url(format!(
                    "scheme must be amqp or amqps, got {other}"
                )))
            }
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let vhost = match parsed.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            path => decode(path),
        };
        Ok(Target {
            host: parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .unwrap_or("localhost")
                .to_owned(),
            port: parsed
                .port()
                .unwrap_or(if tls.is_some() { 5671 } else { 5672 }),
            username: match parsed.username() {
                "" => "guest".to_owned(),
                user => decode(user),
            },
            password: parsed
                .password()
                .map(decode)
                .unwrap_or_else(|| "guest".to_owned()),
            vhost,
            tls,
        })
    }

    /// The TLS client of an `amqps://` target.
    fn tls_connector(&self) -> Result<Option<native_tls::TlsConnector>, AmqpError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(file) = &tls.cacertfile {
            let pem = std::fs::read(file)
                .map_err(|e| AmqpError::Url(format!("cannot read cacertfile {file}: {e}")))?;
            let certificate = native_tls::Certificate::from_pem(&pem)
                .map_err(|e| AmqpError::Url(format!("cacertfile {file}: {e}")))?;
            builder.add_root_certificate(certificate);
        }
        builder
            .build()
            .map(Some)
            .map_err(|e| AmqpError::Url(format!("cannot set up TLS: {e}")))
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }
}

/// Opens a connection with TCP_NODELAY; `name` shows in the management UI.
/// With several brokers (a cluster), tries each in turn, starting one
/// further at every call, so that connections spread over the nodes and a
/// reconnection after a node is lost goes to the next live one; the error
/// names every broker's failure. Each process starts at a random node:
/// replicas do not all begin with the first.
pub fn connect(settings: &AmqpSettings, name: &str) -> Result<Connection, AmqpError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: std::sync::LazyLock<AtomicUsize> =
        std::sync::LazyLock::new(|| AtomicUsize::new(uuid::Uuid::new_v4().as_u128() as usize));
    let targets = settings
        .urls()
        .iter()
        .map(|url| Target::parse(url))
        .collect::<Result<Vec<_>, _>>()?;
    let start = NEXT.fetch_add(1, Ordering::Relaxed) % targets.len();
    let mut failures = Vec::new();
    for i in 0..targets.len() {
        match connect_to(&targets[(start + i) % targets.len()], settings, name) {
            Ok(connection) => return Ok(connection),
            Err(e) if targets.len() == 1 => return Err(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(AmqpError::NoBroker(failures.join("; ")))
}

fn connect_to(
    target: &Target,
    settings: &AmqpSettings,
    name: &str,
) -> Result<Connection, AmqpError> {
    let tls = target.tls_connector()?;
    let addr_text = format!("{}:{}", target.host, target.port);
    let io = |source| AmqpError::Connect {
        addr: addr_text.clone(),
        source,
    };
    let mut last = None;
    for addr in addr_text.to_socket_addrs().map_err(io)? {
        match std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(io)?;
                bound_silence(&stream).map_err(io)?;
                let stream = mio::net::TcpStream::from_stream(stream).map_err(io)?;
                let options = ConnectionOptions::<Auth>::default()
                    .auth(Auth::Plain {
                        username: target.username.clone(),
                        password: target.password.clone(),
                    })
                    .virtual_host(target.vhost.clone())
                    .heartbeat(settings.heartbeat_secs)
                    .connection_timeout(Some(CONNECT_TIMEOUT))
                    .information(Some(name.to_owned()));
                let tuning = ConnectionTuning::default();
                return Ok(match tls {
                    Some(tls) => {
                        Connection::open_tls_stream(tls, &target.host, stream, options, tuning)?
                    }
                    None => Connection::insecure_open_stream(stream, options, tuning)?,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(io(
        last.unwrap_or_else(|| std::io::Error::other("no address"))
    ))
}

/// TCP keepalives and `TCP_USER_TIMEOUT` on the broker's socket.
fn bound_silence(stream: &std::net::TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(5))
            .with_retries(3),
    )?;
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))?;
    Ok(())
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_queue(arguments: FieldTable) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        arguments,
        ..Default::default()
    }
}

/// Dead letters kept at most (the oldest go first beyond).
pub const DEAD_LETTER_MAX_LENGTH: i64 = 100_000;
/// Stock alerts kept at most, and for at most a week.
pub const ALERTS_MAX_LENGTH: i64 = 100_000;
pub const ALERTS_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Messages a work queue (`product_queue`, `order_events`) holds at most.
/// Beyond, the broker refuses new ones (`reject-publish`): the relay's
/// publish is nacked and its outbox rows stay, to be published once the
/// consumers caught up; nothing is dropped, and a flood cannot grow the
/// queue (and the broker's memory and disk) without bound.
pub const WORK_QUEUE_MAX_LENGTH: i64 = 1_000_000;

fn long_arg(arguments: &mut FieldTable, name: &str, value: i64) {
    arguments.insert(name.into(), AmqpValue::LongLongInt(value));
}

/// Arguments that make a queue a quorum queue, replicated on every node of
/// a cluster (up to three; a message confirmed to a publisher is on a
/// majority of them), when `delivery_limit` is set; none else (a classic
/// queue, as older versions declared every queue).
fn replicated(settings: &AmqpSettings) -> FieldTable {
    let mut arguments = FieldTable::new();
    if settings.delivery_limit > 0 {
        arguments.insert(
            "x-queue-type".into(),
            AmqpValue::LongString("quorum".into()),
        );
    }
    arguments
}

/// A work queue's arguments: its dead-letter exchange, its length bound
/// ([`WORK_QUEUE_MAX_LENGTH`], refusing publishes beyond) and, when
/// `delivery_limit` is set, a quorum queue that dead-letters a message
/// delivered that many times (it crashed or stalled every consumer that
/// took it) instead of looping forever. `product_queue` and `order_events`
/// are declared alike; their dead-letter queues alike too (`dead()`).
fn work_queue(settings: &AmqpSettings, dead_letter_exchange: &str) -> FieldTable {
    let mut work = replicated(settings);
    work.insert(
        "x-dead-letter-exchange".into(),
        AmqpValue::LongString(dead_letter_exchange.into()),
    );
    long_arg(&mut work, "x-max-length", WORK_QUEUE_MAX_LENGTH);
    work.insert(
        "x-overflow".into(),
        AmqpValue::LongString("reject-publish".into()),
    );
    if settings.delivery_limit > 0 {
        long_arg(
            &mut work,
            "x-delivery-limit",
            settings.delivery_limit.into(),
        );
    }
    work
}

/// Each queue with the arguments this version declares it with.
fn queues(settings: &AmqpSettings) -> [(&'static str, FieldTable); 5] {
    // Replicated like the work queues: a dead letter or an alert survives
    // the loss of a broker node too.
    let dead = || {
        let mut dead = replicated(settings);
        long_arg(&mut dead, "x-max-length", DEAD_LETTER_MAX_LENGTH);
        dead
    };
    let mut alerts = replicated(settings);
    long_arg(&mut alerts, "x-max-length", ALERTS_MAX_LENGTH);
    long_arg(&mut alerts, "x-message-ttl", ALERTS_TTL_MS);
    [
        (DEAD_LETTER_QUEUE, dead()),
        (PRODUCT_QUEUE, work_queue(settings, DEAD_LETTER_EXCHANGE)),
        (ALERTS_QUEUE, alerts),
        (ORDER_EVENTS_DEAD_LETTER_QUEUE, dead()),
        (
            ORDER_EVENTS_QUEUE,
            work_queue(settings, ORDER_EVENTS_DEAD_LETTER_EXCHANGE),
        ),
    ]
}

/// Declares every exchange, queue and binding of the contract. Idempotent:
/// every process does it on connect, whoever comes first creates them.
///
/// A queue that already exists with other arguments (declared by an older
/// version: a classic `product_queue`, queues without limits) is used as
/// it is, with one warning naming what differs: the broker refuses to
/// change a queue's arguments, and ordersys never deletes a queue that may
/// hold messages. docs/deployment.md, "Upgrading the queues", says how to move it.
pub fn declare_topology(
    connection: &mut Connection,
    settings: &AmqpSettings,
) -> Result<(), AmqpError> {
    let mut channel = connection.open_channel(None)?;
    channel.exchange_declare(ExchangeType::Direct, PRODUCT_EXCHANGE, durable_exchange())?;
    channel.exchange_declare(
        ExchangeType::Fanout,
        DEAD_LETTER_EXCHANGE,
        durable_exchange(),
    )?;
    channel.exchange_declare(ExchangeType::Fanout, ALERTS_EXCHANGE, durable_exchange())?;
    channel.exchange_declare(
        ExchangeType::Direct,
        ORDER_EVENTS_EXCHANGE,
        durable_exchange(),
    )?;
    channel.exchange_declare(
        ExchangeType::Fanout,
        ORDER_EVENTS_DEAD_LETTER_EXCHANGE,
        durable_exchange(),
    )?;
    let partitions = (0..settings.stock_partitions).map(|k| {
        let queue = work_queue(settings, DEAD_LETTER_EXCHANGE);
        (stock_queue(k), queue)
    });
    let queues = queues(settings)
        .into_iter()
        .map(|(name, arguments)| (name.to_owned(), arguments))
        .chain(partitions);
    for (name, arguments) in queues {
        let name = name.as_str();
        match channel.queue_declare(name, durable_queue(arguments)) {
            Ok(_) => {}
            Err(amiquip::Error::ServerClosedChannel {
                code: 406, message, ..
            }) => {
                log::warn!(
                    "queue {name} exists with other arguments than this version declares; \
                     using it as it is (docs/deployment.md, \"Upgrading the queues\"): {message}"
                );
                channel = connection.open_channel(None)?;
                channel.queue_declare_passive(name)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let none = FieldTable::new;
    channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "", none())?;
    channel.queue_bind(PRODUCT_QUEUE, PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, none())?;
    for k in 0..settings.stock_partitions {
        channel.queue_bind(
            stock_queue(k),
            PRODUCT_EXCHANGE,
            stock_routing_key(k),
            none(),
        )?;
    }
    channel.queue_bind(ALERTS_QUEUE, ALERTS_EXCHANGE, "", none())?;
    channel.queue_bind(
        ORDER_EVENTS_DEAD_LETTER_QUEUE,
        ORDER_EVENTS_DEAD_LETTER_EXCHANGE,
        "",
        none(),
    )?;
    channel.queue_bind(
        ORDER_EVENTS_QUEUE,
        ORDER_EVENTS_EXCHANGE,
        ORDER_EVENTS_ROUTING_KEY,
        none(),
    )?;
    channel.close()?;
    Ok(())
}

/// The broker rights each ordersys user needs on its vhost, as RabbitMQ's
/// (configure, write, read) patterns: the orders relay publishes to
/// `product_exchange`, and its saga consumes `order_events` (and
/// dead-letters what it cannot read); a worker consumes `product_queue` and
/// its partitions (`product_queue.{k}`), and
/// publishes dead letters, stock alerts and line events; `ordersys migrate`
/// declares the topology. No
/// user may declare, consume or publish anything else (the Swarm stack's
/// definitions, written by swarm/create-secrets.sh, hold the same patterns).
pub const PERMISSIONS: &[BrokerUser] = &[
    BrokerUser {
        name: "ordersys_orders",
        configure: "^$",
        write: "^(product_exchange|order_events_dlx)$",
        read: "^order_events$",
    },
    BrokerUser {
        name: "ordersys_worker",
        configure: "^$",
        write: "^(product_dlx|stock_alerts|order_events)$",
        read: r"^product_queue(\.[0-9]+)?$",
    },
    BrokerUser {
        name: "ordersys_migrate",
        configure: TOPOLOGY,
        write: TOPOLOGY,
        read: TOPOLOGY,
    },
];

const TOPOLOGY: &str = r"^(product_exchange|product_queue|product_queue\.[0-9]+|product_queue\.dlq|product_dlx|stock_alerts|order_events|order_events\.dlq|order_events_dlx)$";

/// One broker user and its permission patterns.
#[derive(Debug, Clone, Copy)]
pub struct BrokerUser {
    pub name: &'static str,
    pub configure: &'static str,
    pub write: &'static str,
    pub read: &'static str,
}

/// What a service does on connect: declare the topology, unless
/// `amqp.declare_topology` is false (its broker user may not configure;
/// `ordersys migrate` declared it, and a missing exchange or queue shows
/// as a broker error that the caller retries with backoff).
pub fn ensure_topology(
    connection: &mut Connection,
    settings: &AmqpSettings,
) -> Result<(), AmqpError> {
    if settings.declare_topology {
        declare_topology(connection, settings)
    } else {
        Ok(())
    }
}

/// Properties of every message ordersys publishes: persistent, JSON, with
/// its id.
pub fn properties(message_id: &str) -> AmqpProperties {
    AmqpProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id.into())
}

/// A channel in confirm mode that publishes in windows: publish many, then
/// wait once for all their confirms. Every message is published
/// `mandatory`: one the broker cannot route to a queue (a binding or a
/// queue deleted under us) comes back, and the window counts as not sent,
/// instead of being confirmed and silently dropped.
pub struct ConfirmingChannel {
    channel: Channel,
    confirms: Receiver<Confirm>,
    returns: Receiver<amiquip::Return>,
    next_tag: u64,
    outstanding: BTreeSet<u64>,
    nacked: usize,
}

impl ConfirmingChannel {
    pub fn new(channel: Channel) -> Result<Self, AmqpError> {
        let confirms = channel.listen_for_publisher_confirms()?;
        let returns = channel.listen_for_returns()?;
        channel.enable_publisher_confirms()?;
        Ok(ConfirmingChannel {
            channel,
            confirms,
            returns,
            next_tag: 1,
            outstanding: BTreeSet::new(),
            nacked: 0,
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), AmqpError> {
        let mut publish = Publish::with_properties(body, routing_key, properties);
        publish.mandatory = true;
        self.channel.basic_publish(exchange, publish)?;
        self.outstanding.insert(self.next_tag);
        self.next_tag += 1;
        Ok(())
    }

    /// Waits until every message published so far is confirmed; fails if
    /// any was nacked (the caller must treat the whole window as unsent).
    pub fn wait_for_confirms(&mut self, timeout: Duration) -> Result<(), AmqpError> {
        let deadline = Instant::now() + timeout;
        while !self.outstanding.is_empty() {
            let confirm = self.confirms.recv_deadline(deadline).map_err(|e| match e {
                crossbeam_channel::RecvTimeoutError::Timeout => AmqpError::ConfirmTimeout(timeout),
                crossbeam_channel::RecvTimeoutError::Disconnected => AmqpError::Closed,
            })?;
            let (payload, nack) = match confirm {
                Confirm::Ack(p) => (p, false),
                Confirm::Nack(p) => (p, true),
            };
            let settled: Vec<u64> = if payload.multiple {
                self.outstanding
                    .range(..=payload.delivery_tag)
                    .copied()
                    .collect()
            } else {
                vec![payload.delivery_tag]
            };
            for tag in settled {
                if self.outstanding.remove(&tag) && nack {
                    self.nacked += 1;
                }
            }
        }
        let nacked = std::mem::take(&mut self.nacked);
        if nacked > 0 {
            return Err(AmqpError::Nacked(nacked));
        }
        // The broker sends a message's return before its confirm: every
        // return of this window has arrived by now.
        let returned: Vec<amiquip::Return> = self.returns.try_iter().collect();
        if let Some(first) = returned.first() {
            return Err(AmqpError::Returned {
                count: returned.len(),
                reason: format!(
                    "{} {} via {:?}",
                    first.reply_code, first.reply_text, first.exchange
                ),
            });
        }
        Ok(())
    }

    pub fn close(self) {
        let _ = self.channel.close();
    }
}

/// Publishes `delivery` to `exchange` (a dead-letter exchange) as it came,
/// every original property kept, with its reason in `x-ordersys-error`
/// and the reason's class in `x-ordersys-error-class`; the caller waits for
/// the confirms.
pub fn dead_letter(
    channel: &mut ConfirmingChannel,
    exchange: &str,
    delivery: &amiquip::Delivery,
    reason: &str,
    class: crate::messages::DeadLetterClass,
) -> Result<(), AmqpError> {
    use crate::messages::{ERROR_CLASS_HEADER, ERROR_HEADER};
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(ERROR_HEADER.into(), AmqpValue::LongString(reason.into()));
    headers.insert(
        ERROR_CLASS_HEADER.into(),
        AmqpValue::LongString(class.as_str().into()),
    );
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    channel.publish(exchange, &delivery.routing_key, &delivery.body, properties)
}

/// How long a stopping consumer waits for the broker to confirm its cancel.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Stops a consumer's deliveries; unacknowledged prefetched messages go
/// back to the queue when its channel closes. amiquip answers our cancel
/// before it tells the consumer's own receiver; dropping the receiver in
/// between makes its I/O loop fail with an ERROR line ("channel client
/// dropped without being disconnected"), so the receiver is kept until
/// that last message arrives.
pub fn cancel(consumer: amiquip::Consumer<'_>) {
    if consumer.cancel().is_ok() {
        let deadline = Instant::now() + CANCEL_TIMEOUT;
        while let Ok(message) = consumer.receiver().recv_deadline(deadline) {
            if matches!(message, amiquip::ConsumerMessage::ClientCancelled) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_amqp_urls_like_rabbitmq_does() {
        let t = Target::parse("amqp://user:p%40ss@broker:5673/my%2Fvhost").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.username.as_str(),
                t.password.as_str(),
                t.vhost()
            ),
            ("broker", 5673, "user", "p@ss", "my/vhost")
        );
        let t = Target::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(t.vhost(), "/");
        let t = Target::parse("amqp://h").unwrap();
        assert_eq!(
            (t.port, t.username.as_str(), t.vhost()),
            (5672, "guest", "/")
        );
        let t = Target::parse("amqps://u:secret@h/v?cacertfile=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(t.port, 5671);
        assert_eq!(
            t.tls.as_ref().and_then(|t| t.cacertfile.as_deref()),
            Some("/etc/ca.pem")
        );
        assert!(!format!("{t:?}").contains("secret"));
        assert!(Target::parse("http://h").is_err());
    }
}
