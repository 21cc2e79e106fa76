//! Validated names: the text newtypes ([`DedupKey`](crate::DedupKey),
//! [`GroupId`](crate::GroupId), [`InstanceId`](crate::InstanceId), [`JobKey`](crate::JobKey))
//! that are checked once, by their own constructor, and are then only ever text known good.
//!
//! Each type declares itself (`pub struct T(String)` with its derives and rustdoc) and writes
//! its own validating constructor `T::new(impl Into<String>) -> Result<T>`; [`validated_name!`]
//! writes the rest, the same for all of them, so that no way in (parsing, deserializing) skips
//! the check.

use crate::error::{Error, Result};
use crate::layout::{MAX_NAME, is_valid_name};

/// The rule instance names, group names and job keys follow (also the error text when one does
/// not).
pub(crate) const NAME_RULE: &str =
    "expected 1 to 128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit";

/// Checks `name` against the directory-name rule ([`is_valid_name`]): `name` back if it passes,
/// else [`Error::InvalidName`] with `what`, the text (cut short) and [`NAME_RULE`].
pub(crate) fn check_name(what: &'static str, name: String) -> Result<String> {
    if is_valid_name(&name) {
        Ok(name)
    } else {
        Err(Error::InvalidName {
            what,
            text: name.chars().take(MAX_NAME + 32).collect(),
            reason: NAME_RULE,
        })
    }
}

/// Writes the shared part of a validated-name newtype `struct $ty(String)` whose own
/// `$ty::new(impl Into<String>) -> Result<$ty>` validates:
///
/// - `as_str(&self) -> &str`, documented by the doc comments given before the type's name;
/// - `FromStr` (through the constructor, `Err = Error`), `Display` (the bare text) and
///   `AsRef<str>`;
/// - `Debug` as the literal `debug` format applied to the text (e.g. `"GroupId({})"`);
/// - with `serde`: `Serialize` as a plain string, and `Deserialize` of a string through the
///   constructor, so that a bad name is a deserialization error carrying the constructor's
///   message.
///
/// ```text
/// validated_name! {
///     /// The name as text.
///     GroupId, new = GroupId::new, debug = "GroupId({})", serde
/// }
/// ```
macro_rules! validated_name {
    (
        $(#[$as_str_doc:meta])*
        $ty:ident, new = $new:path, debug = $debug:literal $(, $serde:ident)?
    ) => {
        impl $ty {
            $(#[$as_str_doc])*
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::error::Error;

            fn from_str(s: &str) -> $crate::error::Result<$ty> {
                $new(s)
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, $debug, self.0)
            }
        }

        impl ::std::convert::AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        $($crate::name::validated_name!(@$serde $ty, $new);)?
    };
    (@serde $ty:ident, $new:path) => {
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<$ty, D::Error> {
                let s = <::std::string::String as ::serde::Deserialize>::deserialize(d)?;
                $new(s).map_err(::serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use validated_name;

#[cfg(test)]
mod tests {
    use crate::{DedupKey, GroupId, InstanceId, JobId, JobKey};

    /// What the generated impls give, pinned: the text, the `Debug` forms, the serde format and
    /// the errors (parse and deserialize alike).
    #[test]
    fn generated_impls() {
        let g: GroupId = "g-1".parse().unwrap();
        let i: InstanceId = "w.1".parse().unwrap();
        let k: JobKey = "job_0".parse().unwrap();
        let d: DedupKey = "a b".parse().unwrap();
        assert_eq!(
            (g.as_str(), i.as_str(), k.as_str(), d.as_str()),
            ("g-1", "w.1", "job_0", "a b")
        );
        assert_eq!(
            (g.as_ref(), i.as_ref(), k.as_ref(), d.as_ref()),
            ("g-1", "w.1", "job_0", "a b")
        );
        assert_eq!(
            [g.to_string(), i.to_string(), k.to_string(), d.to_string()],
            ["g-1", "w.1", "job_0", "a b"]
        );
        assert_eq!(format!("{g:?}"), "GroupId(g-1)");
        assert_eq!(format!("{i:?}"), "InstanceId(w.1)");
        assert_eq!(format!("{k:?}"), "JobKey(job_0)");
        assert_eq!(format!("{d:?}"), "DedupKey(\"a b\")");

        assert_eq!(serde_json::to_string(&g).unwrap(), "\"g-1\"");
        assert_eq!(serde_json::to_string(&i).unwrap(), "\"w.1\"");
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"job_0\"");
        assert_eq!(serde_json::from_str::<GroupId>("\"g-1\"").unwrap(), g);
        assert_eq!(serde_json::from_str::<InstanceId>("\"w.1\"").unwrap(), i);
        assert_eq!(serde_json::from_str::<JobKey>("\"job_0\"").unwrap(), k);
        let id = JobId::generate();
        assert_eq!(JobKey::from(id).as_str(), id.to_string());

        let rule = super::NAME_RULE;
        for (what, parsed, read) in [
            (
                "group name",
                "../x".parse::<GroupId>().map(|_| ()),
                serde_json::from_str::<GroupId>("\"../x\"").map(|_| ()),
            ),
            (
                "instance name",
                "../x".parse::<InstanceId>().map(|_| ()),
                serde_json::from_str::<InstanceId>("\"../x\"").map(|_| ()),
            ),
            (
                "job key",
                "../x".parse::<JobKey>().map(|_| ()),
                serde_json::from_str::<JobKey>("\"../x\"").map(|_| ()),
            ),
        ] {
            let want = format!("invalid {what} \"../x\": {rule}");
            assert_eq!(parsed.unwrap_err().to_string(), want);
            assert!(read.unwrap_err().to_string().starts_with(&want), "{what}");
        }
        let long = "a".repeat(400);
        let e = GroupId::new(long.clone()).unwrap_err().to_string();
        assert_eq!(e, format!("invalid group name {:?}: {rule}", &long[..160]));
        assert_eq!(
            "".parse::<DedupKey>().unwrap_err().to_string(),
            "invalid de-duplication key \"\": \
             use 1 to 1024 bytes of text without control characters"
        );
    }
}
