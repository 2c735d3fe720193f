//! `[zenoh]` in a build without the `zenoh` cargo feature (`cargo build --no-default-features`): the section
//! is still read, so a configuration written for a full build loads, but `enabled = true` is refused, naming
//! the field.

use std::collections::BTreeMap;

use serde::Deserialize;

use kestrel_core::check::Invalid;

/// `[zenoh]`, unread but for `enabled`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ZenohConfig {
    pub enabled: bool,
    /// The other settings, kept only to tell a change at reload.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl ZenohConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.enabled {
            return Err((
                "zenoh.enabled",
                "this kestrel was built without Zenoh (cargo feature `zenoh`): rebuild with it, or set false".into(),
            ));
        }
        Ok(())
    }
}
