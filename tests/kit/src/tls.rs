//! TLS in front of the local PostgreSQL and RabbitMQ (and of a test's
//! HTTP services), with a certificate authority made for the test, so that
//! `amqps://` URLs, PostgreSQL's `sslmode` settings and `ordersys load`'s
//! `https://` URLs are tested against real handshakes: the front
//! terminates TLS and forwards the plain bytes to the server, as an edge
//! proxy does.
//!
//! PostgreSQL negotiates TLS inside its own protocol (an `SSLRequest`
//! answered with `S`, then the handshake); the front refuses a client that
//! starts in the clear, so a test can tell that TLS was used.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority and a server certificate it signed for
/// `localhost` and `127.0.0.1`, the CA's PEM written to a file.
pub struct TestCa {
    pub ca_file: PathBuf,
    /// Another CA's PEM, which did not sign the server's certificate.
    pub stranger_ca_file: PathBuf,
    identity: native_tls::Identity,
    dir: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let authority = |name: &str| {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).expect("CA certificate");
            (cert, key)
        };
        let (ca, ca_key) = authority("ordersys test CA");
        let (stranger, _) = authority("some other CA");
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server = params
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let identity = native_tls::Identity::from_pkcs8(
            server.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .expect("TLS identity");
        let dir = std::env::temp_dir().join(format!("ordersys-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca_file = dir.join("ca.pem");
        let stranger_ca_file = dir.join("stranger-ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        std::fs::write(&stranger_ca_file, stranger.pem()).expect("write CA");
        TestCa {
            ca_file,
            stranger_ca_file,
            identity,
            dir,
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the front speaks to its clients before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TLS from the first byte (`amqps://`, `https://`).
    Direct,
    /// PostgreSQL's `SSLRequest`, then TLS.
    Postgres,
}

/// A TLS listener on 127.0.0.1 forwarding to `upstream`.
pub struct TlsFront {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

/// PostgreSQL's `SSLRequest` and `GSSENCRequest` codes.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

impl TlsFront {
    pub async fn start(ca: &TestCa, protocol: Protocol, upstream: SocketAddr) -> TlsFront {
        let acceptor = tokio_native_tls::TlsAcceptor::from(
            native_tls::TlsAcceptor::new(ca.identity.clone()).expect("TLS acceptor"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let handshakes = handshakes.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (acceptor, handshakes) = (acceptor.clone(), handshakes.clone());
                    tokio::spawn(async move {
                        let _ = forward(client, acceptor, protocol, upstream, &handshakes).await;
                    });
                }
            }
        });
        TlsFront {
            addr,
            handshakes,
            accept,
        }
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    acceptor: tokio_native_tls::TlsAcceptor,
    protocol: Protocol,
    upstream: SocketAddr,
    handshakes: &AtomicUsize,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    if protocol == Protocol::Postgres {
        loop {
            let mut request = [0u8; 8];
            client.read_exact(&mut request).await?;
            let code = u32::from_be_bytes(request[4..8].try_into().unwrap());
            match code {
                GSSENC_REQUEST => client.write_all(b"N").await?,
                SSL_REQUEST => {
                    client.write_all(b"S").await?;
                    break;
                }
                // A client in the clear: refused.
                _ => return Ok(()),
            }
        }
    }
    let mut tls = acceptor
        .accept(client)
        .await
        .map_err(std::io::Error::other)?;
    handshakes.fetch_add(1, Ordering::SeqCst);
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
    Ok(())
}
