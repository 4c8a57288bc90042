//! Deserialization helpers that validate while deserializing, so that serde_yaml attaches
//! the field path and line of the offending node to every error.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Implements `Deserialize` for `$ty` by deserializing the mapping as `$raw` and converting
/// it with `TryFrom<$raw, Error = String>` inside the mapping visitor: a conversion error
/// then carries the path and line of this mapping.
macro_rules! validated_map {
    ($ty:ty, $raw:ty, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty, A::Error> {
                        let raw = <$raw as serde::Deserialize>::deserialize(
                            serde::de::value::MapAccessDeserializer::new(map),
                        )?;
                        <$ty as std::convert::TryFrom<$raw>>::try_from(raw)
                            .map_err(<A::Error as serde::de::Error>::custom)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}
pub(crate) use validated_map;

/// Implements `Deserialize` for `$ty` from a string scalar with `$parse: fn(&str) -> Result<$ty, String>`.
macro_rules! validated_str {
    ($ty:ty, $expecting:literal, $parse:expr) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        let parse: fn(&str) -> Result<$ty, String> = $parse;
                        parse(v).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}
pub(crate) use validated_str;

/// A scalar that is either an integer or a string, as written (Kubernetes IntOrString).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IntOrString {
    /// An integer scalar.
    Int(i64),
    /// A string scalar.
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("integer {v} out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Implements `Deserialize` for `$ty` from an integer-or-string scalar with
/// `$parse: fn(IntOrString) -> Result<$ty, String>`; errors carry the scalar's path and line.
macro_rules! validated_int_or_str {
    ($ty:ty, $expecting:literal, $parse:expr) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use $crate::policy::parse::validated::IntOrString;
                struct V;
                impl V {
                    fn done<E: serde::de::Error>(v: IntOrString) -> Result<$ty, E> {
                        let parse: fn(IntOrString) -> Result<$ty, String> = $parse;
                        parse(v).map_err(E::custom)
                    }
                }
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        Self::done(IntOrString::Int(v))
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        match i64::try_from(v) {
                            Ok(v) => Self::done(IntOrString::Int(v)),
                            Err(_) => Err(E::custom(format!("integer {v} out of range"))),
                        }
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        Self::done(IntOrString::Str(v.to_string()))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}
pub(crate) use validated_int_or_str;

/// A field Cilium defines but this implementation does not support: any value other than
/// null is rejected (ignoring it could silently widen or narrow what a policy allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsupported;

const UNSUPPORTED: &str = "this field is not supported by this implementation";

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Unsupported;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("nothing")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Unsupported, E> {
                Err(E::custom(UNSUPPORTED))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Unsupported, E> {
                Err(E::custom(UNSUPPORTED))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Unsupported, E> {
                Err(E::custom(UNSUPPORTED))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Unsupported, E> {
                Err(E::custom(UNSUPPORTED))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Unsupported, E> {
                Err(E::custom(UNSUPPORTED))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Unsupported, E> {
                Ok(Unsupported)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Unsupported, A::Error> {
                Err(de::Error::custom(UNSUPPORTED))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Unsupported, A::Error> {
                Err(de::Error::custom(UNSUPPORTED))
            }
        }
        d.deserialize_any(V)
    }
}
