//! Logging: env_logger, filtered by `RUST_LOG` (default `info`), in one of
//! two formats (`log.format`): env_logger's human-readable lines, or one
//! JSON object per line for log shippers. Both carry the same fields: the
//! time, the level, the target, the message, and the record's key-values
//! (`request_id`, `message_id`, …).

use crate::settings::LogFormat;
use log::kv::{Key, Value, VisitSource};
use std::io::Write;

/// Target of the per-message lines of the pipeline (published, applied,
/// stale, duplicate, dead-lettered), each with its `request_id`.
pub const FLOW: &str = "ordersys::flow";

/// Starts logging; call once.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = json_line(record, &buf.timestamp_micros().to_string());
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// One record as a JSON object: `ts`, `level`, `target`, `msg`, then its
/// key-values (a key named like one of the four is prefixed with `kv_`).
pub fn json_line(record: &log::Record<'_>, timestamp: &str) -> String {
    let mut object = serde_json::Map::new();
    object.insert("ts".into(), timestamp.into());
    object.insert("level".into(), record.level().as_str().into());
    object.insert("target".into(), record.target().into());
    object.insert("msg".into(), record.args().to_string().into());
    let mut fields = Fields(&mut object);
    let _ = record.key_values().visit(&mut fields);
    serde_json::Value::Object(object).to_string()
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let mut key = key.as_str().to_owned();
        if self.0.contains_key(&key) {
            key.insert_str(0, "kv_");
        }
        let value = if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_one_json_object_with_its_fields() {
        let kvs: &[(&str, &dyn log::kv::ToValue)] = &[
            ("request_id", &"abc-1"),
            ("batch", &3_i64),
            ("msg", &"clash"),
        ];
        let line = json_line(
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("ordersys::flow")
                .args(format_args!("dead-lettered \"x\"\nnext"))
                .key_values(&kvs)
                .build(),
            "2026-12-03T10:00:00.000000Z",
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "ordersys::flow");
        assert_eq!(v["msg"], "dead-lettered \"x\"\nnext");
        assert_eq!(v["request_id"], "abc-1");
        assert_eq!(v["batch"], 3);
        assert_eq!(v["kv_msg"], "clash");
        assert_eq!(v["ts"], "2026-12-03T10:00:00.000000Z");
    }
}
