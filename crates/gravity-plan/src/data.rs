//! [`PhaseData`]: a phase's parameters, stored compactly.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The free-form parameters of a phase: one immutable JSON document.
///
/// It is kept as compact JSON text behind a reference count rather than
/// as a [`serde_json::Value`] tree. A tree costs about ten times its text
/// (every object is a map of separately allocated keys and 32-byte
/// values), and a plan of 10,000 nodes carries some 100,000 of them; as
/// trees they were most of the plan's memory. Cloning a phase, a plan or
/// a graph now shares the text, and phases built from the same value (the
/// same node's drain, taint and uncordon) can share one copy.
///
/// Executors read it with [`PhaseData::decode`] into their own struct, or
/// [`PhaseData::to_value`] for ad-hoc access.
#[derive(Clone, Default)]
pub struct PhaseData(Option<Arc<str>>);

impl PhaseData {
    /// No data (JSON `null`).
    pub const fn null() -> Self {
        PhaseData(None)
    }

    /// The data of a JSON value (`null` is [`PhaseData::null`]).
    pub fn from_value(value: &Value) -> Self {
        if value.is_null() {
            return PhaseData(None);
        }
        // Serializing a Value to a string cannot fail: its map keys are
        // strings and its numbers are finite.
        PhaseData(Some(value.to_string().into()))
    }

    /// The data of any serializable value, e.g. an executor's data struct.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        let text = serde_json::to_string(value)?;
        Ok(if text == "null" {
            PhaseData(None)
        } else {
            PhaseData(Some(text.into()))
        })
    }

    /// Whether there is no data.
    pub fn is_null(&self) -> bool {
        self.0.is_none()
    }

    /// The compact JSON text (`null` when there is no data).
    pub fn as_json(&self) -> &str {
        self.0.as_deref().unwrap_or("null")
    }

    /// Decodes the data into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_json())
    }

    /// The data as a JSON value (parsed on every call).
    pub fn to_value(&self) -> Value {
        // The text was written by serde_json from a valid document.
        serde_json::from_str(self.as_json()).unwrap_or(Value::Null)
    }

    /// Whether both hold the very same text allocation (cheap sharing check).
    pub fn shares_with(&self, other: &PhaseData) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl From<Value> for PhaseData {
    fn from(value: Value) -> Self {
        PhaseData::from_value(&value)
    }
}

impl From<&Value> for PhaseData {
    fn from(value: &Value) -> Self {
        PhaseData::from_value(value)
    }
}

impl PartialEq for PhaseData {
    fn eq(&self, other: &Self) -> bool {
        // Equal text is equal data; different text may still be the same
        // document (object keys in another order), so compare the values.
        self.as_json() == other.as_json() || self.to_value() == other.to_value()
    }
}

impl PartialEq<Value> for PhaseData {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for PhaseData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

impl fmt::Display for PhaseData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

impl Serialize for PhaseData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Through a value, so that every format (JSON, YAML) writes a
        // document rather than a string of JSON.
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PhaseData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(PhaseData::from_value(&Value::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_round_trips() {
        let d = PhaseData::from_value(&Value::Null);
        assert!(d.is_null());
        assert_eq!(d.as_json(), "null");
        assert_eq!(d, PhaseData::null());
        assert_eq!(serde_json::to_string(&d).unwrap(), "null");
        let back: PhaseData = serde_json::from_str("null").unwrap();
        assert!(back.is_null());
    }

    #[test]
    fn documents_are_compact_and_decode() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct D {
            file: String,
            n: u32,
        }
        let d = PhaseData::from_serialize(&D {
            file: "a".into(),
            n: 3,
        })
        .unwrap();
        assert_eq!(d.as_json(), r#"{"file":"a","n":3}"#);
        assert_eq!(
            d.decode::<D>().unwrap(),
            D {
                file: "a".into(),
                n: 3
            }
        );
        assert_eq!(d.to_value()["n"], 3);
        assert!(d.decode::<Vec<u8>>().is_err());
    }

    #[test]
    fn equality_ignores_key_order() {
        let a = PhaseData(Some(r#"{"a":1,"b":2}"#.into()));
        let b = PhaseData(Some(r#"{"b":2,"a":1}"#.into()));
        assert_eq!(a, b);
        assert_ne!(a, PhaseData::from(json!({"a": 1})));
        assert_eq!(a, json!({"a": 1, "b": 2}));
    }

    #[test]
    fn clones_share_the_text() {
        let a = PhaseData::from(json!({"server": {"hostname": "node-1"}}));
        let b = a.clone();
        assert!(a.shares_with(&b));
        assert!(!a.shares_with(&PhaseData::from(a.to_value())));
    }

    #[test]
    fn yaml_writes_a_document() {
        let d = PhaseData::from(json!({"file": "x"}));
        assert_eq!(serde_yaml_ng::to_string(&d).unwrap(), "file: x\n");
        let back: PhaseData = serde_yaml_ng::from_str("file: x\n").unwrap();
        assert_eq!(back, d);
    }
}
