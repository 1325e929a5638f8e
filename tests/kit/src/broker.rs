//! A RabbitMQ virtual host per test (deleted at the end), raw access to its
//! queues, and fault injection: closing every connection of the vhost, or
//! cutting the network between ordersys and the broker with a proxy.
//!
//! Administration goes through the management HTTP API when it is enabled,
//! else through `rabbitmqctl` (both are the real broker; nothing is mocked).

use amiquip::{AmqpProperties, Channel, Connection, Publish};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn amqp_base() -> String {
    std::env::var("ORDERSYS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

fn api_addr() -> String {
    std::env::var("ORDERSYS_TEST_RABBITMQ_API").unwrap_or_else(|_| "127.0.0.1:15672".into())
}

/// A request to the management API; None when the API is not reachable.
fn api(method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&api_addr().parse().ok()?, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Sets `user`'s permissions (a JSON object) on `vhost` through the management API.
fn grant(vhost: &str, user: &str, permissions: &str) {
    let (status, body) = api(
        "PUT",
        &format!("/api/permissions/{vhost}/{user}"),
        Some(permissions),
    )
    .expect("management API answers");
    assert!(
        matches!(status, 201 | 204),
        "set permissions: {status} {body}"
    );
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("RabbitMQ's management API is not reachable and rabbitmqctl cannot run ({e})")
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct TestBroker {
    pub vhost: String,
    /// The AMQP URL of the vhost.
    pub url: String,
    /// Users made by [`TestBroker::user_url`], deleted with the vhost.
    users: std::sync::Mutex<Vec<String>>,
}

impl TestBroker {
    pub fn create() -> TestBroker {
        let vhost = format!("ordersys-test-{}", uuid::Uuid::new_v4().simple());
        match api("PUT", &format!("/api/vhosts/{vhost}"), Some("{}")) {
            Some((201 | 204, _)) => {
                grant(
                    &vhost,
                    "guest",
                    r#"{"configure":".*","write":".*","read":".*"}"#,
                );
            }
            Some((status, body)) => panic!("creating vhost {vhost}: {status} {body}"),
            None => {
                rabbitmqctl(&["add_vhost", &vhost]);
                rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
            }
        }
        let url = format!("{}/{vhost}", amqp_base());
        let broker = TestBroker {
            vhost,
            url,
            users: Default::default(),
        };
        // Fail now, with a clear message, if the broker cannot be reached.
        if let Err(e) = broker.try_connect() {
            panic!(
                "RabbitMQ is not reachable at {} ({e}). The tests need a real broker.",
                amqp_base()
            );
        }
        broker
    }

    /// Connects as ordersys does (TCP_NODELAY set), so that broker figures
    /// measured through this connection are not bounded by Nagle's delay.
    fn try_connect(&self) -> Result<Connection, ordersys::amqp::AmqpError> {
        ordersys::amqp::connect(&self.settings(), "ordersys-tests")
    }

    /// The default AMQP settings, pointed at this vhost.
    pub fn settings(&self) -> ordersys::settings::AmqpSettings {
        let defaults = ordersys::settings::Settings::load_from(None, &[], &|_| None)
            .expect("default settings");
        ordersys::settings::AmqpSettings {
            url: self.url.clone(),
            heartbeat_secs: 0,
            ..defaults.amqp
        }
    }

    pub fn connect(&self) -> Connection {
        self.try_connect().expect("connect to the test vhost")
    }

    /// Runs `f` with a channel on which the topology is declared.
    pub fn with_channel<T>(&self, f: impl FnOnce(&Channel) -> T) -> T {
        let mut connection = self.connect();
        ordersys::amqp::declare_topology(&mut connection, &self.settings())
            .expect("declare topology");
        let channel = connection.open_channel(None).expect("open channel");
        let value = f(&channel);
        let _ = channel.close();
        let _ = connection.close();
        value
    }

    /// Runs `f` with a channel on which nothing was declared.
    pub fn with_raw_channel(&self, f: impl FnOnce(&Channel) -> Result<(), amiquip::Error>) {
        let mut connection = self.connect();
        let channel = connection.open_channel(None).expect("open channel");
        f(&channel).expect("raw channel work");
        let _ = channel.close();
        let _ = connection.close();
    }

    /// Publishes a raw body, persistent, as a producer other than ordersys would.
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
    ) {
        self.with_channel(|channel| {
            let mut properties = AmqpProperties::default().with_delivery_mode(2);
            if let Some(id) = message_id {
                properties = properties.with_message_id(id.into());
            }
            channel
                .basic_publish(
                    exchange,
                    Publish::with_properties(body, routing_key, properties),
                )
                .expect("publish");
        })
    }

    /// Ready (not in-flight) messages in `queue`.
    pub fn ready(&self, queue: &str) -> u32 {
        self.with_channel(|channel| {
            channel
                .queue_declare_passive(queue)
                .expect("queue exists")
                .declared_message_count()
                .unwrap_or(0)
        })
    }

    /// Consumers of `queue`.
    pub fn consumers(&self, queue: &str) -> u32 {
        self.with_channel(|channel| {
            channel
                .queue_declare_passive(queue)
                .expect("queue exists")
                .declared_consumer_count()
                .unwrap_or(0)
        })
    }

    /// Takes every ready message of dead-letter `queue`; returns the
    /// reason each carries, in order.
    pub fn dead_letter_reasons(&self, queue: &str) -> Vec<String> {
        self.drain(queue)
            .iter()
            .map(|(_, properties)| error_header(properties.headers()).expect("a reason"))
            .collect()
    }

    /// Takes every ready message of `queue` (acknowledging them).
    pub fn drain(&self, queue: &str) -> Vec<(Vec<u8>, AmqpProperties)> {
        self.with_channel(|channel| {
            let mut messages = Vec::new();
            while let Some(get) = channel.basic_get(queue, false).expect("basic.get") {
                let body = get.delivery.body.clone();
                let properties = get.delivery.properties.clone();
                get.ack(channel).expect("ack");
                messages.push((body, properties));
            }
            messages
        })
    }

    /// Closes every client connection of the vhost, as a network failure
    /// would; returns how many there were. (rabbitmqctl acts at once; the
    /// management API only lists connections after its next stats tick.)
    pub fn close_all_connections(&self) -> usize {
        let out = Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "-q",
                "--no-table-headers",
                "-p",
                &self.vhost,
                "name",
            ])
            .output()
            .expect("rabbitmqctl list_connections");
        let count = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        rabbitmqctl(&[
            "close_all_connections",
            "-p",
            &self.vhost,
            "test fault injection",
        ]);
        count
    }
}

impl TestBroker {
    /// The AMQP URL of a new user (a fresh name after `user.name`) that has
    /// `user`'s permissions on this vhost and none elsewhere.
    pub fn user_url(&self, user: &ordersys::amqp::BrokerUser) -> String {
        let name = format!("{}-{}", user.name, uuid::Uuid::new_v4().simple());
        let password = uuid::Uuid::new_v4().simple().to_string();
        let body = format!(r#"{{"password":"{password}","tags":""}}"#);
        let permissions = serde_json::json!({
            "configure": user.configure, "write": user.write, "read": user.read
        })
        .to_string();
        match api("PUT", &format!("/api/users/{name}"), Some(&body)) {
            Some((201 | 204, _)) => {
                grant(&self.vhost, &name, &permissions);
            }
            Some((status, body)) => panic!("creating user {name}: {status} {body}"),
            None => {
                rabbitmqctl(&["add_user", &name, &password]);
                rabbitmqctl(&[
                    "set_permissions",
                    "-p",
                    &self.vhost,
                    &name,
                    user.configure,
                    user.write,
                    user.read,
                ]);
            }
        }
        self.users.lock().unwrap().push(name.clone());
        let base = url::Url::parse(&amqp_base()).expect("AMQP base URL");
        format!(
            "amqp://{name}:{password}@{}:{}/{}",
            base.host_str().unwrap_or("127.0.0.1"),
            base.port().unwrap_or(5672),
            self.vhost
        )
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        for user in self.users.lock().unwrap().drain(..) {
            if api("DELETE", &format!("/api/users/{user}"), None).is_none() {
                let _ = Command::new("rabbitmqctl")
                    .args(["delete_user", &user])
                    .output();
            }
        }
        match api("DELETE", &format!("/api/vhosts/{}", self.vhost), None) {
            Some(_) => {}
            None => {
                let _ = Command::new("rabbitmqctl")
                    .args(["delete_vhost", &self.vhost])
                    .output();
            }
        }
    }
}

/// The broker user called `name` in ordersys's own list of them.
pub fn broker_user(name: &str) -> &'static ordersys::amqp::BrokerUser {
    ordersys::amqp::PERMISSIONS
        .iter()
        .find(|u| u.name == name)
        .unwrap()
}

impl TestBroker {
    /// What `ordersys migrate` does, as its own user, before the services
    /// (which may not declare) start: declares the topology on this vhost.
    pub fn declare_as_migrate(&self, amqp: &ordersys::settings::AmqpSettings) {
        let settings = ordersys::settings::AmqpSettings {
            url: self.user_url(broker_user("ordersys_migrate")),
            ..amqp.clone()
        };
        let mut connection = ordersys::amqp::connect(&settings, "ordersys-tests").unwrap();
        ordersys::amqp::declare_topology(&mut connection, &settings).expect("migrate may declare");
        let _ = connection.close();
    }
}

/// The reason a dead letter carries (its `x-ordersys-error` header).
pub fn error_header(headers: &Option<amiquip::FieldTable>) -> Option<String> {
    match headers.as_ref()?.get(ordersys::messages::ERROR_HEADER)? {
        amiquip::AmqpValue::LongString(reason) => Some(reason.clone()),
        _ => None,
    }
}
