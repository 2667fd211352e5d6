//! Private Integration Tokens. A PIT belongs to one sub-account (location): `GHL_TOKEN` is
//! the token of `GHL_LOCATION_ID`, and `GHL_LOCATION_TOKENS_FILE` maps location ids to
//! tokens. The file is read again when it changes (PITs are meant to be rotated), so a new
//! token takes effect without a restart; a file that no longer reads keeps the tokens in use.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use secrecy::SecretString;

use crate::model::ids::LocationId;

/// The PITs by location.
#[derive(Clone, Default)]
pub struct Pits {
    /// `GHL_TOKEN`, for `GHL_LOCATION_ID` only.
    one: Option<(LocationId, SecretString)>,
    /// `GHL_LOCATION_TOKENS_FILE`, as last read.
    file: HashMap<LocationId, SecretString>,
}

impl fmt::Debug for Pits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pits")
            .field("one", &self.one.as_ref().map(|(l, _)| l))
            .field("file", &self.file.len())
            .finish()
    }
}

impl Pits {
    pub fn new(
        one: Option<(LocationId, SecretString)>,
        file: HashMap<LocationId, SecretString>,
    ) -> Pits {
        Pits { one, file }
    }

    /// The location's token: the file's (where a rotation is made), else `GHL_TOKEN` when it
    /// is the location's.
    pub fn get(&self, location: &LocationId) -> Option<&SecretString> {
        self.file.get(location).or_else(|| match &self.one {
            Some((l, token)) if l == location => Some(token),
            _ => None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.one.is_none() && self.file.is_empty()
    }

    /// How many locations have a PIT.
    pub fn len(&self) -> usize {
        let extra = self
            .one
            .as_ref()
            .is_some_and(|(l, _)| !self.file.contains_key(l));
        self.file.len() + usize::from(extra)
    }

    /// Every location with a PIT.
    pub fn locations(&self) -> impl Iterator<Item = &LocationId> {
        let one = self.one.as_ref().map(|(l, _)| l);
        self.file
            .keys()
            .chain(one.filter(|l| !self.file.contains_key(*l)))
    }

    /// The same `GHL_TOKEN` with the file's new contents.
    pub fn with_file(&self, file: HashMap<LocationId, SecretString>) -> Pits {
        Pits {
            one: self.one.clone(),
            file,
        }
    }
}

/// Reads a token file: a YAML mapping of location ids to tokens. Errors name the place, never
/// a token.
pub fn read_file(path: &Path) -> Result<HashMap<LocationId, SecretString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let map = serde_yaml::from_str::<HashMap<String, String>>(&text).map_err(|e| {
        // serde_yaml errors quote the offending value; keep only where it is.
        let at = e
            .location()
            .map_or("not a mapping of strings".to_owned(), |l| {
                format!("problem at line {}, column {}", l.line(), l.column())
            });
        format!("{} must map location ids to tokens: {at}", path.display())
    })?;
    let mut tokens = HashMap::new();
    for (location, token) in map {
        if token.trim().is_empty() {
            return Err(format!("the token of location {location} is empty"));
        }
        let id = LocationId::parse(location.trim()).map_err(|e| e.to_string())?;
        tokens.insert(id, SecretString::from(token.trim().to_owned()));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> LocationId {
        LocationId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ghl_token_is_its_locations_only_and_the_file_wins() {
        let one = Some((id("L1"), SecretString::from("one")));
        let pits = Pits::new(one, HashMap::new());
        assert!(pits.get(&id("L1")).is_some());
        assert!(
            pits.get(&id("L2")).is_none(),
            "no token for other locations"
        );
        assert_eq!(pits.len(), 1);
        let file = HashMap::from([
            (id("L1"), SecretString::from("rotated")),
            (id("L2"), SecretString::from("two")),
        ]);
        let pits = pits.with_file(file);
        let l1 = pits
            .get(&id("L1"))
            .map(secrecy::ExposeSecret::expose_secret);
        assert_eq!(l1, Some("rotated"));
        assert_eq!(pits.len(), 2);
        assert!(!format!("{pits:?}").contains("rotated"));
    }
}
