//! The id that follows one change from its HTTP request to the stock: the
//! access log line, the outbox row, the AMQP message (`correlation_id` and a
//! W3C `traceparent` header), the worker's log line and stock movement, and
//! the line's history all carry it.
//!
//! The id is always the server's own: a client's `X-Request-Id` (or the
//! trace id of its `traceparent`) is kept beside it as the client's id,
//! logged and stored as such, never in its place (anyone could otherwise
//! reuse another request's id and blur whose change was whose).
//!
//! Pure functions: what an id may look like, where an incoming one comes
//! from, how a trace context is written. The HTTP middleware
//! ([`crate::http::observe`]), the relay and the worker use them.

use std::fmt;
use uuid::Uuid;

/// Request header a client (or a proxy) may set; the response always has it.
pub const HEADER: &str = "x-request-id";
/// W3C Trace Context header, on requests and on AMQP messages.
pub const TRACEPARENT: &str = "traceparent";
/// The longest id accepted (the database columns are `VARCHAR(128)`).
pub const MAX_LEN: usize = 128;

/// A request id: 1 to 128 characters among ASCII letters, digits and
/// `-_.:@/+=`, so it is safe in a header, a log line and a URL; with the
/// id its client sent, if any (same rules), for an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId {
    id: String,
    client: Option<String>,
}

impl RequestId {
    /// A fresh id: 32 lowercase hex digits, which is also a W3C trace id.
    pub fn generate() -> RequestId {
        RequestId {
            id: Uuid::new_v4().simple().to_string(),
            client: None,
        }
    }

    /// `value` if it is a valid id, else `None` (never an error: a bad id
    /// from outside is replaced, not refused).
    pub fn parse(value: &str) -> Option<RequestId> {
        let valid = !value.is_empty()
            && value.len() <= MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:@/+=".contains(&b));
        valid.then(|| RequestId {
            id: value.to_owned(),
            client: None,
        })
    }

    /// The id of an incoming request: always a fresh one; its client's id
    /// is a valid `X-Request-Id`, else the trace id of a valid
    /// `traceparent`, else none (an invalid one is dropped).
    pub fn for_request(request_id: Option<&str>, traceparent: Option<&str>) -> RequestId {
        let client = request_id
            .and_then(RequestId::parse)
            .map(|c| c.id)
            .or_else(|| traceparent.and_then(trace_id_of));
        RequestId {
            client,
            ..RequestId::generate()
        }
    }

    /// The server's id.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The id the client sent, if it sent a valid one: logged and stored
    /// as the client's, never trusted as the server's.
    pub fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// The W3C trace id this request id stands for: itself when it is one
    /// (32 lowercase hex digits, not all zero), else a name-based UUID of it
    /// (always the same for the same id).
    pub fn trace_id(&self) -> String {
        if is_trace_id(&self.id) {
            self.id.clone()
        } else {
            Uuid::new_v5(&Uuid::NAMESPACE_OID, self.id.as_bytes())
                .simple()
                .to_string()
        }
    }

    /// A `traceparent` for a message this request caused; `span` (the
    /// message id) names the message as the span's parent id.
    pub fn traceparent(&self, span: Uuid) -> String {
        let mut parent_id = span.simple().to_string();
        parent_id.truncate(16);
        if parent_id.bytes().all(|b| b == b'0') {
            parent_id.replace_range(15.., "1");
        }
        format!("00-{}-{parent_id}-01", self.trace_id())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_trace_id(s: &str) -> bool {
    s.len() == 32 && is_hex(s) && s.bytes().any(|b| b != b'0')
}

/// The trace id of a valid W3C `traceparent`
/// (`version-traceid-parentid-flags`, lowercase hex), else `None`.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may append more.
    let more = parts.next().is_some();
    let valid = version.len() == 2
        && is_hex(version)
        && version != "ff"
        && !(version == "00" && more)
        && is_trace_id(trace)
        && parent.len() == 16
        && is_hex(parent)
        && parent.bytes().any(|b| b != b'0')
        && flags.len() == 2
        && is_hex(flags);
    valid.then(|| trace.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn valid_ids_are_kept_and_others_replaced() {
        for id in ["abc", "order-42_retry.1", "a:b@c/d+e=f", &"x".repeat(128)] {
            assert_eq!(RequestId::parse(id).unwrap().as_str(), id);
        }
        for id in [
            "",
            "has space",
            "new\nline",
            "é",
            "<script>",
            &"x".repeat(129),
        ] {
            assert_eq!(RequestId::parse(id), None, "{id:?}");
        }
    }

    #[test]
    fn the_server_id_is_always_fresh_and_the_client_one_kept_beside_it() {
        let parent = format!("00-{TRACE}-00f067aa0ba902b7-01");
        // A client's id never becomes the server's: anyone could reuse
        // another request's id.
        let mine = RequestId::for_request(Some("mine"), Some(&parent));
        assert!(is_trace_id(mine.as_str()), "{mine}");
        assert_eq!(mine.client(), Some("mine"));
        let traced = RequestId::for_request(Some("bad id"), Some(&parent));
        assert_ne!(traced.as_str(), TRACE);
        assert_eq!(traced.client(), Some(TRACE));
        let fresh = RequestId::for_request(None, Some("00-garbage"));
        assert!(is_trace_id(fresh.as_str()), "{fresh}");
        assert_eq!(fresh.client(), None);
        let dropped = RequestId::for_request(Some(&"x".repeat(129)), None);
        assert_eq!(dropped.client(), None);
        assert_ne!(
            RequestId::for_request(Some("same"), None).as_str(),
            RequestId::for_request(Some("same"), None).as_str()
        );
    }

    #[test]
    fn traceparents_are_parsed_strictly() {
        let ok = format!("00-{TRACE}-00f067aa0ba902b7-01");
        assert_eq!(trace_id_of(&ok).as_deref(), Some(TRACE));
        // A later version may carry more fields.
        let later = format!("01-{TRACE}-00f067aa0ba902b7-01-extra");
        assert_eq!(trace_id_of(&later).as_deref(), Some(TRACE));
        for bad in [
            format!("00-{TRACE}-00f067aa0ba902b7-01-extra"),
            format!("ff-{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-00f067aa0ba902b7"),
            "00".to_owned(),
        ] {
            assert_eq!(trace_id_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_carry_a_traceparent_of_the_request() {
        let id = RequestId::parse(TRACE).unwrap();
        let span = Uuid::parse_str("00f067aa-0ba9-02b7-8000-000000000000").unwrap();
        assert_eq!(
            id.traceparent(span),
            format!("00-{TRACE}-00f067aa0ba902b7-01")
        );
        // Not a trace id: a stable one stands for it.
        let named = RequestId::parse("order-42").unwrap();
        let parent = named.traceparent(span);
        assert_eq!(trace_id_of(&parent), Some(named.trace_id()));
        assert_eq!(
            named.trace_id(),
            RequestId::parse("order-42").unwrap().trace_id()
        );
        assert_eq!(
            id.traceparent(Uuid::nil()),
            format!("00-{TRACE}-0000000000000001-01")
        );
    }
}
