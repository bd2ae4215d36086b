//! The lines of `publish --from`: one message per line, the line itself as its body (`raw`) or a
//! JSON object naming its id, destination, headers and body (`json`).

use rabbit_once::{FieldValue, Message};

/// How a `--from` line is read.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// The line (without its line ending) is the body.
    #[default]
    Raw,
    /// The line is a JSON object: {"id", "exchange", "routing_key", "headers", "body"}, all
    /// optional.
    Json,
}

/// What a line does not say for itself.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// The exchange ("" is the default exchange, which routes by queue name).
    pub exchange: String,
    /// The routing key (with the default exchange: the queue).
    pub routing_key: String,
    /// Delivery mode 1 instead of persistent.
    pub transient: bool,
    /// Whether an unroutable message is returned (and counted as failed) rather than dropped.
    pub mandatory: bool,
}

/// A JSON line. Unknown fields are refused: a misspelt `routing_key` would otherwise send the
/// message somewhere else without a word.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    id: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    body: Option<serde_json::Value>,
}

/// The most bytes of a message id or header name (AMQP short strings).
const SHORT_STR: usize = 255;

/// The message of one line (without its line ending), or why the line is malformed.
pub fn message(line: &[u8], format: Format, d: &Defaults) -> Result<Message, String> {
    let m = match format {
        Format::Raw => Message::new(&d.exchange, &d.routing_key, line.to_vec()),
        Format::Json => json(line, d)?,
    };
    let m = if d.transient { m.transient() } else { m };
    Ok(m.with_mandatory(d.mandatory))
}

fn json(line: &[u8], d: &Defaults) -> Result<Message, String> {
    let l: JsonLine = serde_json::from_slice(line).map_err(|e| {
        // serde's "at line 1 column N" would read as a line of the file: keep the column.
        let text = e.to_string();
        let what = text.split(" at line ").next().unwrap_or_default();
        format!("not a JSON object: {what} (column {})", e.column())
    })?;
    let body = match l.body {
        None => Vec::new(),
        Some(serde_json::Value::String(s)) => s.into_bytes(),
        // An object, array, number, …: its compact JSON text.
        Some(v) => v.to_string().into_bytes(),
    };
    let mut m = Message::new(
        l.exchange.unwrap_or_else(|| d.exchange.clone()),
        l.routing_key.unwrap_or_else(|| d.routing_key.clone()),
        body,
    );
    if let Some(id) = l.id {
        if id.is_empty() || id.len() > SHORT_STR {
            return Err(format!("\"id\" must be 1 to {SHORT_STR} bytes"));
        }
        m = m.with_message_id(id);
    }
    for (k, v) in l.headers {
        if k.len() > SHORT_STR {
            return Err(format!("header name longer than {SHORT_STR} bytes"));
        }
        let value: FieldValue = match v {
            serde_json::Value::String(s) => s.into(),
            serde_json::Value::Bool(b) => b.into(),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => i.into(),
                None => n
                    .as_f64()
                    .ok_or_else(|| format!("header {k:?}: number out of range"))?
                    .into(),
            },
            _ => {
                return Err(format!(
                    "header {k:?}: only strings, numbers and booleans are allowed"
                ));
            }
        };
        m = m.with_header(k, value);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            exchange: String::new(),
            routing_key: "orders".into(),
            transient: false,
            mandatory: true,
        }
    }

    #[test]
    fn a_raw_line_is_the_body_to_the_default_destination() {
        let m = message(b"hello {not json}", Format::Raw, &defaults()).unwrap();
        let expected = Message::to_queue("orders", b"hello {not json}".to_vec());
        assert_eq!(m, expected);
    }

    #[test]
    fn a_json_line_sets_id_destination_headers_and_body() {
        let line = br#"{"id":"o-1","exchange":"ex","routing_key":"k","headers":{"s":"v","n":7,"f":1.5,"b":true},"body":"hi"}"#;
        let m = message(line, Format::Json, &defaults()).unwrap();
        let expected = Message::new("ex", "k", b"hi".to_vec())
            .with_message_id("o-1") // the headers in name order
            .with_header("b", true)
            .with_header("f", 1.5f64)
            .with_header("n", 7i64)
            .with_header("s", "v");
        assert_eq!(m, expected);
        // Nothing but a body: the defaults, and the publisher gives it an id.
        let m = message(br#"{"body":{"a":[1,2]}}"#, Format::Json, &defaults()).unwrap();
        assert_eq!(m, Message::to_queue("orders", br#"{"a":[1,2]}"#.to_vec()));
    }

    #[test]
    fn malformed_json_lines_say_what_is_wrong() {
        let d = defaults();
        let err = |l: &[u8]| message(l, Format::Json, &d).unwrap_err();
        assert!(err(b"{\"body\":").starts_with("not a JSON object"));
        assert!(err(b"[1]").starts_with("not a JSON object"));
        assert!(err(br#"{"routingkey":"x"}"#).contains("unknown field"));
        assert!(err(br#"{"headers":{"x":null}}"#).contains("header \"x\""));
        assert!(err(br#"{"id":""}"#).contains("\"id\""));
    }
}
