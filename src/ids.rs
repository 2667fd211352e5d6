//! Newtypes for GoHighLevel identifiers, so a contact id can never be passed where a user id
//! is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
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

id_type!(
    /// A GoHighLevel location (sub-account) id.
    LocationId
);
id_type!(
    /// A GoHighLevel contact id.
    ContactId
);
id_type!(
    /// A GoHighLevel opportunity id.
    OpportunityId
);
id_type!(
    /// A GoHighLevel user id: what the followers endpoints take.
    UserId
);

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
}
