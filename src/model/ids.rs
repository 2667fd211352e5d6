//! Newtypes for GoHighLevel identifiers, so a contact id can never be passed where a user id
//! is expected, and an id is always of the shape GoHighLevel issues: 1 to [`MAX_ID_LEN`]
//! ASCII letters, digits, `_` or `-`. That shape is checked where an id enters (a webhook
//! body, a rule file, an operator's argument, a stored row), so a value such as `..` or
//! `a/b` can never reach a request path.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest id accepted (GoHighLevel's are 20 characters; UUIDs 36).
pub const MAX_ID_LEN: usize = 64;

/// A value that is not of the shape of a GoHighLevel id. It never shows the value (which may
/// come from a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a {kind} id: ids are 1 to 64 letters, digits, `_` or `-`")]
pub struct InvalidId {
    pub kind: &'static str,
}

/// Whether `s` has the shape of a GoHighLevel id.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id, when `id` has the shape of one.
            pub fn parse(id: &str) -> Result<Self, InvalidId> {
                if is_valid_id(id) {
                    Ok(Self(id.to_owned()))
                } else {
                    Err(InvalidId { kind: $kind })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;

            fn try_from(id: String) -> Result<Self, InvalidId> {
                if is_valid_id(&id) {
                    Ok(Self(id))
                } else {
                    Err(InvalidId { kind: $kind })
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;

            fn from_str(id: &str) -> Result<Self, InvalidId> {
                Self::parse(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// Deserializing checks the shape, like [`LocationId::parse`].
macro_rules! checked_deserialize {
    ($($name:ident),*) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

id_type!(
    /// A GoHighLevel location (sub-account) id.
    LocationId,
    "location"
);
id_type!(
    /// A GoHighLevel contact id.
    ContactId,
    "contact"
);
id_type!(
    /// A GoHighLevel opportunity id.
    OpportunityId,
    "opportunity"
);
id_type!(
    /// A GoHighLevel user id: what the followers endpoints take.
    UserId,
    "user"
);

checked_deserialize!(LocationId, ContactId, OpportunityId);

/// User ids are checked where they enter (webhook bodies, rule files, GoHighLevel's answers)
/// but read back from stored decision records as they were written: records made before ids
/// were checked must stay readable, and a user id only ever travels in a JSON body (which
/// escapes it), never in a request path.
impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(UserId)
    }
}

/// Whether `s` has the shape of a GoHighLevel record id: 20 ASCII letters and digits.
///
/// Used to warn about `add`/`remove` entries that are probably misspelled aliases.
pub fn looks_like_ghl_id(s: &str) -> bool {
    s.len() == 20 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghl_id_shape_is_twenty_alphanumerics() {
        assert!(looks_like_ghl_id("9hTnVvSr1Q2ZyE5kHfXm"));
        assert!(!looks_like_ghl_id("alice"));
        assert!(!looks_like_ghl_id("9hTnVvSr1Q2ZyE5kHfX-"));
        assert!(!looks_like_ghl_id("9hTnVvSr1Q2ZyE5kHfXmm"));
    }

    #[test]
    fn ids_that_could_leave_a_url_path_segment_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a?b",
            "a#b",
            "a%2e",
            "a b",
            "é",
            "a\n",
            &"x".repeat(65),
        ] {
            assert_eq!(
                ContactId::parse(bad),
                Err(InvalidId { kind: "contact" }),
                "{bad:?}"
            );
        }
        for good in [
            "nmFmQEsNgz6AVpgLVUJ0",
            "c1",
            "c0ffee00-0000-4000-8000-000000000003",
            "a_b",
            &"x".repeat(64),
        ] {
            assert!(ContactId::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn deserializing_checks_the_shape_too() {
        let ok: Result<LocationId, _> = serde_json::from_str(r#""L1""#);
        assert!(ok.is_ok());
        let bad: Result<LocationId, _> = serde_json::from_str(r#"".."#);
        assert!(bad.is_err());
        assert_eq!(
            serde_json::to_string(&UserId::parse("u1").ok())
                .ok()
                .as_deref(),
            Some(r#""u1""#)
        );
        // Stored decision records stay readable (user ids never reach a path).
        let old: Result<UserId, _> = serde_json::from_str(r#""bob smith""#);
        assert!(old.is_ok());
    }
}
