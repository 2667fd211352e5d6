//! A location's custom fields (`GET /locations/{id}/customFields`): what `check --online`
//! confirms a rule's `fields` paths against. App webhooks carry custom fields by id
//! (`customFields: [{id, value}]`); workflow webhooks by their name.

use reqwest::Method;
use secrecy::SecretString;
use serde_json::Value;

use super::{CallError, GhlClient};
use crate::model::ids::LocationId;

/// One custom field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomField {
    pub id: String,
    pub name: String,
    /// Such as `contact.lead_score`.
    pub field_key: String,
}

impl GhlClient {
    /// The location's custom fields.
    pub async fn custom_fields(
        &self,
        token: &SecretString,
        location: &LocationId,
    ) -> Result<Vec<CustomField>, CallError> {
        let path = format!("/locations/{location}/customFields");
        let endpoint = ("custom_fields", path.as_str());
        let (_, body) = self
            .send(token, location, Method::GET, endpoint, &[], None)
            .await?;
        let fields = body.get("customFields").and_then(Value::as_array);
        let text = |f: &Value, key: &str| {
            let value = f.get(key).and_then(Value::as_str);
            value.unwrap_or_default().to_owned()
        };
        let read = fields.into_iter().flatten().filter_map(|f| {
            Some(CustomField {
                id: f.get("id").and_then(Value::as_str)?.to_owned(),
                name: text(f, "name"),
                field_key: text(f, "fieldKey"),
            })
        });
        Ok(read.collect())
    }
}
