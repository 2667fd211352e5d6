//! The event model: both kinds of GoHighLevel webhook body, normalized into one [`Event`].
//!
//! - **App webhooks** (`POST /webhooks/ghl`): flat JSON with a `type` key, for example
//!   `ContactCreate` or `OpportunityStageUpdate`. Contact events carry the contact id as `id`;
//!   opportunity events carry the opportunity as `id` and the contact as `contactId`.
//! - **Workflow webhooks** (`POST /webhooks/workflow`): the body a workflow's Webhook action
//!   sends, snake_case keys, `location.id`, `tags` as a comma-separated string, the stage *name*
//!   in `pipleline_stage` (GoHighLevel's spelling), the assigned user only as `user.email`.
//!
//! Parsing is lenient: unknown keys are ignored and any documented key may be missing or of an
//! unexpected type (then it counts as missing). Only the location id and the contact id are
//! required, and an error names the one that is missing.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::ids::{ContactId, LocationId, OpportunityId, UserId};

/// The kind of event, by GoHighLevel's name. [`EventType::Workflow`] stands for every body a
/// workflow's Webhook action sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EventType {
    ContactCreate,
    ContactUpdate,
    ContactDelete,
    ContactTagUpdate,
    ContactDndUpdate,
    OpportunityCreate,
    OpportunityUpdate,
    OpportunityDelete,
    OpportunityStageUpdate,
    OpportunityStatusUpdate,
    OpportunityAssignedToUpdate,
    OpportunityMonetaryValueUpdate,
    Workflow,
}

impl EventType {
    /// Every supported event type, in documentation order.
    pub const ALL: [EventType; 13] = [
        EventType::ContactCreate,
        EventType::ContactUpdate,
        EventType::ContactDelete,
        EventType::ContactTagUpdate,
        EventType::ContactDndUpdate,
        EventType::OpportunityCreate,
        EventType::OpportunityUpdate,
        EventType::OpportunityDelete,
        EventType::OpportunityStageUpdate,
        EventType::OpportunityStatusUpdate,
        EventType::OpportunityAssignedToUpdate,
        EventType::OpportunityMonetaryValueUpdate,
        EventType::Workflow,
    ];

    /// GoHighLevel's name for the event type (`"Workflow"` for workflow webhooks).
    pub fn name(self) -> &'static str {
        match self {
            EventType::ContactCreate => "ContactCreate",
            EventType::ContactUpdate => "ContactUpdate",
            EventType::ContactDelete => "ContactDelete",
            EventType::ContactTagUpdate => "ContactTagUpdate",
            EventType::ContactDndUpdate => "ContactDndUpdate",
            EventType::OpportunityCreate => "OpportunityCreate",
            EventType::OpportunityUpdate => "OpportunityUpdate",
            EventType::OpportunityDelete => "OpportunityDelete",
            EventType::OpportunityStageUpdate => "OpportunityStageUpdate",
            EventType::OpportunityStatusUpdate => "OpportunityStatusUpdate",
            EventType::OpportunityAssignedToUpdate => "OpportunityAssignedToUpdate",
            EventType::OpportunityMonetaryValueUpdate => "OpportunityMonetaryValueUpdate",
            EventType::Workflow => "Workflow",
        }
    }

    /// The event type with exactly this name.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn is_opportunity(self) -> bool {
        self.name().starts_with("Opportunity")
    }

    pub fn is_contact(self) -> bool {
        self.name().starts_with("Contact")
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The user an event says the contact or opportunity is assigned to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignedUser {
    /// App webhooks carry the user id (`assignedTo`).
    Id(UserId),
    /// Workflow webhooks carry only `user.email`; the caller resolves it to an id.
    Email(String),
}

/// One GoHighLevel event, normalized from either kind of webhook body.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub event_type: EventType,
    pub location_id: LocationId,
    pub contact_id: ContactId,
    pub opportunity_id: Option<OpportunityId>,
    /// The lead source (`source` in app webhooks, `contact_source` in workflow webhooks).
    pub source: Option<String>,
    /// The contact's full current tag list; `None` when the event does not describe the
    /// contact's tags (opportunity events), which is different from "no tags".
    pub tags: Option<Vec<String>>,
    pub assigned_user: Option<AssignedUser>,
    pub pipeline_id: Option<String>,
    pub pipeline_name: Option<String>,
    pub stage_id: Option<String>,
    pub stage_name: Option<String>,
    /// Opportunity status as sent (`open`, `won`, `lost`, `abandoned`).
    pub status: Option<String>,
    pub workflow_id: Option<String>,
    pub workflow_name: Option<String>,
    /// `webhookId` of an app webhook delivery; GoHighLevel re-sends it unchanged on retries.
    pub webhook_id: Option<String>,
    /// `timestamp` of an app webhook delivery, as sent.
    pub timestamp: Option<String>,
    /// The whole body, for `fields` conditions.
    #[serde(skip)]
    pub raw: Value,
}

/// What a webhook body parsed into.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// An event the rules can decide on.
    Event(Box<Event>),
    /// A well-formed body of a type autofollow does not act on (`INSTALL`, `UserCreate`, …).
    /// Rules never match it.
    Unsupported {
        event_type: String,
        location_id: Option<LocationId>,
    },
}

/// Why a webhook body could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("missing field `{0}`")]
    MissingField(&'static str),
}

/// Parses an app webhook body (the JSON GoHighLevel sends to an app's webhook URL).
pub fn parse_app(body: &[u8]) -> Result<Parsed, ParseError> {
    let raw: Value = serde_json::from_slice(body)?;
    app_event(raw)
}

/// Parses the body a workflow's Webhook action sends.
pub fn parse_workflow(body: &[u8]) -> Result<Event, ParseError> {
    let raw: Value = serde_json::from_slice(body)?;
    workflow_event(raw)
}

/// Parses either kind of body: an app webhook when it has a string `type`, else a workflow
/// webhook. For tools (`autofollow explain`); the service knows which endpoint it was sent to.
pub fn parse_any(body: &[u8]) -> Result<Parsed, ParseError> {
    let raw: Value = serde_json::from_slice(body)?;
    if raw.get("type").is_some_and(Value::is_string) {
        app_event(raw)
    } else {
        workflow_event(raw).map(|e| Parsed::Event(Box::new(e)))
    }
}

fn app_event(raw: Value) -> Result<Parsed, ParseError> {
    let obj = raw.as_object().ok_or(ParseError::NotObject)?;
    let type_name = text(obj, "type").ok_or(ParseError::MissingField("type"))?;
    let event_type = match EventType::from_name(&type_name) {
        Some(t) if t != EventType::Workflow => t,
        _ => {
            return Ok(Parsed::Unsupported {
                event_type: type_name,
                location_id: text(obj, "locationId").map(LocationId::new),
            });
        }
    };
    let location_id = text(obj, "locationId").ok_or(ParseError::MissingField("locationId"))?;
    let (contact_id, opportunity_id, tags) = if event_type.is_opportunity() {
        let contact = text(obj, "contactId").ok_or(ParseError::MissingField("contactId"))?;
        (contact, text(obj, "id"), obj.get("tags").map(tag_list))
    } else {
        let contact = text(obj, "id").ok_or(ParseError::MissingField("id"))?;
        // Contact events carry the full tag list; GoHighLevel leaves out empty fields.
        (
            contact,
            None,
            Some(obj.get("tags").map(tag_list).unwrap_or_default()),
        )
    };
    let event = Event {
        event_type,
        location_id: LocationId::new(location_id),
        contact_id: ContactId::new(contact_id),
        opportunity_id: opportunity_id.map(OpportunityId::new),
        source: text(obj, "source"),
        tags,
        assigned_user: text(obj, "assignedTo").map(|id| AssignedUser::Id(UserId::new(id))),
        pipeline_id: text(obj, "pipelineId"),
        pipeline_name: None,
        stage_id: text(obj, "pipelineStageId"),
        stage_name: None,
        status: text(obj, "status"),
        workflow_id: None,
        workflow_name: None,
        webhook_id: text(obj, "webhookId"),
        timestamp: text(obj, "timestamp"),
        raw,
    };
    Ok(Parsed::Event(Box::new(event)))
}

fn workflow_event(raw: Value) -> Result<Event, ParseError> {
    let obj = raw.as_object().ok_or(ParseError::NotObject)?;
    let location = obj.get("location").and_then(Value::as_object);
    let location_id = location
        .and_then(|l| text(l, "id"))
        .ok_or(ParseError::MissingField("location.id"))?;
    let contact_id = text(obj, "contact_id").ok_or(ParseError::MissingField("contact_id"))?;
    let workflow = obj.get("workflow").and_then(Value::as_object);
    let user = obj.get("user").and_then(Value::as_object);
    let assigned_user = user.and_then(|u| {
        text(u, "id")
            .map(|id| AssignedUser::Id(UserId::new(id)))
            .or_else(|| text(u, "email").map(AssignedUser::Email))
    });
    let pipeline_id = text(obj, "pipeline_id");
    // Only opportunity triggers send `id`, and then it is the opportunity's.
    let opportunity_id = pipeline_id
        .is_some()
        .then(|| text(obj, "id"))
        .flatten()
        .or_else(|| text(obj, "opportunity_id"));
    Ok(Event {
        event_type: EventType::Workflow,
        location_id: LocationId::new(location_id),
        contact_id: ContactId::new(contact_id),
        opportunity_id: opportunity_id.map(OpportunityId::new),
        source: text(obj, "contact_source").or_else(|| text(obj, "source")),
        tags: Some(obj.get("tags").map(tag_list).unwrap_or_default()),
        assigned_user,
        pipeline_id,
        pipeline_name: text(obj, "pipeline_name"),
        stage_id: None,
        stage_name: text(obj, "pipleline_stage").or_else(|| text(obj, "pipeline_stage")),
        status: text(obj, "status"),
        workflow_id: workflow.and_then(|w| text(w, "id")),
        workflow_name: workflow.and_then(|w| text(w, "name")),
        webhook_id: None,
        timestamp: None,
        raw,
    })
}

/// A non-empty string value (trimmed). Numbers count too, since some senders write ids and
/// values as numbers; anything else counts as missing.
fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    let s = match obj.get(key)? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// Tags as a list: an array of strings, or one comma-separated string (workflow webhooks).
fn tag_list(value: &Value) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match value {
        Value::String(s) => split(s),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(split)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app(v: Value) -> Result<Parsed, ParseError> {
        parse_app(v.to_string().as_bytes())
    }

    fn app_event(v: Value) -> Event {
        match app(v) {
            Ok(Parsed::Event(e)) => *e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn contact_event_takes_contact_id_from_id() {
        let e = app_event(
            json!({"type": "ContactCreate", "locationId": "L", "id": "C", "tags": ["a", " b "]}),
        );
        assert_eq!(e.contact_id.as_str(), "C");
        assert_eq!(e.opportunity_id, None);
        assert_eq!(e.tags, Some(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn contact_event_without_tags_has_no_tags_rather_than_unknown_tags() {
        let e = app_event(json!({"type": "ContactUpdate", "locationId": "L", "id": "C"}));
        assert_eq!(e.tags, Some(vec![]));
    }

    #[test]
    fn opportunity_event_takes_contact_from_contact_id_and_has_unknown_tags() {
        let e = app_event(json!({
            "type": "OpportunityStageUpdate", "locationId": "L", "id": "O", "contactId": "C",
            "pipelineId": "P", "pipelineStageId": "S", "status": "open", "assignedTo": "U"
        }));
        assert_eq!(e.contact_id.as_str(), "C");
        assert_eq!(e.opportunity_id, Some(OpportunityId::new("O")));
        assert_eq!(e.tags, None);
        assert_eq!(e.stage_id.as_deref(), Some("S"));
        assert_eq!(e.assigned_user, Some(AssignedUser::Id(UserId::new("U"))));
    }

    #[test]
    fn missing_ids_are_named() {
        let err = |v: Value| app(v).err().map(|e| e.to_string());
        assert_eq!(
            err(json!({"type": "ContactCreate", "id": "C"})).as_deref(),
            Some("missing field `locationId`")
        );
        assert_eq!(
            err(json!({"type": "ContactCreate", "locationId": "L"})).as_deref(),
            Some("missing field `id`")
        );
        assert_eq!(
            err(json!({"type": "OpportunityCreate", "locationId": "L", "id": "O"})).as_deref(),
            Some("missing field `contactId`")
        );
        assert_eq!(
            err(json!({"locationId": "L"})).as_deref(),
            Some("missing field `type`")
        );
        assert_eq!(
            err(json!([1])).as_deref(),
            Some("body is not a JSON object")
        );
        assert!(parse_app(b"{").is_err());
    }

    #[test]
    fn empty_or_mistyped_values_count_as_missing() {
        let r = app(json!({"type": "ContactCreate", "locationId": " ", "id": "C"}));
        assert!(matches!(r, Err(ParseError::MissingField("locationId"))));
        let e = app_event(
            json!({"type": "ContactCreate", "locationId": "L", "id": "C", "source": {"x": 1}, "tags": 7}),
        );
        assert_eq!(e.source, None);
        assert_eq!(e.tags, Some(vec![]));
    }

    #[test]
    fn other_types_are_unsupported_not_errors() {
        let r = app(json!({"type": "INSTALL", "appId": "A", "locationId": "L"})).ok();
        assert_eq!(
            r,
            Some(Parsed::Unsupported {
                event_type: "INSTALL".into(),
                location_id: Some(LocationId::new("L"))
            })
        );
        // "Workflow" is our name for workflow webhooks, not an app event type.
        let r = app(json!({"type": "Workflow", "locationId": "L", "id": "C"})).ok();
        assert!(matches!(r, Some(Parsed::Unsupported { .. })));
    }

    #[test]
    fn workflow_tags_string_is_split_on_commas_and_trimmed() {
        let e = parse_workflow(
            json!({"contact_id": "C", "location": {"id": "L"}, "tags": "vip, webinar ,,hot"})
                .to_string()
                .as_bytes(),
        )
        .ok();
        assert_eq!(
            e.and_then(|e| e.tags),
            Some(vec!["vip".into(), "webinar".into(), "hot".into()])
        );
    }

    #[test]
    fn workflow_opportunity_fields_and_misspelled_stage_key() {
        let body = json!({
            "contact_id": "C", "location": {"id": "L"}, "id": "O", "pipeline_id": "P",
            "pipeline_name": "Sales", "pipleline_stage": "Proposal", "status": "open",
            "user": {"email": "rep@example.com"}, "workflow": {"id": "W", "name": "Hot leads"},
            "contact_source": "Facebook Ads"
        });
        let e = parse_workflow(body.to_string().as_bytes()).ok();
        let e = e.as_ref();
        assert_eq!(e.map(|e| e.event_type), Some(EventType::Workflow));
        assert_eq!(
            e.and_then(|e| e.opportunity_id.clone()),
            Some(OpportunityId::new("O"))
        );
        assert_eq!(e.and_then(|e| e.stage_name.as_deref()), Some("Proposal"));
        assert_eq!(e.and_then(|e| e.pipeline_name.as_deref()), Some("Sales"));
        assert_eq!(
            e.and_then(|e| e.workflow_name.as_deref()),
            Some("Hot leads")
        );
        assert_eq!(e.and_then(|e| e.source.as_deref()), Some("Facebook Ads"));
        assert_eq!(
            e.and_then(|e| e.assigned_user.clone()),
            Some(AssignedUser::Email("rep@example.com".into()))
        );
        let correct = json!({"contact_id": "C", "location": {"id": "L"}, "pipeline_stage": "Won"});
        let e = parse_workflow(correct.to_string().as_bytes()).ok();
        assert_eq!(e.and_then(|e| e.stage_name), Some("Won".into()));
    }

    #[test]
    fn workflow_missing_ids_are_named() {
        let err = |v: Value| {
            parse_workflow(v.to_string().as_bytes())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            err(json!({"contact_id": "C"})).as_deref(),
            Some("missing field `location.id`")
        );
        assert_eq!(
            err(json!({"location": {"id": "L"}})).as_deref(),
            Some("missing field `contact_id`")
        );
    }

    #[test]
    fn parse_any_tells_the_kinds_apart() {
        let wf = json!({"contact_id": "C", "location": {"id": "L"}, "type": 3});
        let r = parse_any(wf.to_string().as_bytes()).ok();
        assert!(matches!(r, Some(Parsed::Event(e)) if e.event_type == EventType::Workflow));
        let a = json!({"type": "ContactCreate", "locationId": "L", "id": "C"});
        let r = parse_any(a.to_string().as_bytes()).ok();
        assert!(matches!(r, Some(Parsed::Event(e)) if e.event_type == EventType::ContactCreate));
    }
}
