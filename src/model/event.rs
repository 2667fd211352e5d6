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
//! required, and an error names the one that is missing. Every id a body carries (location,
//! contact, opportunity, assigned user, pipeline, stage) must have the shape of a GoHighLevel
//! id ([`crate::model::ids::is_valid_id`]); an error names the field that does not.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::{ContactId, InvalidId, LocationId, OpportunityId, UserId, is_valid_id};

/// Which parser reads a stored body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyKind {
    App,
    Workflow,
    /// A task autofollow queued itself ([`super::task::TaskBody`]), not a webhook.
    Task,
}

impl BodyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyKind::App => "app",
            BodyKind::Workflow => "workflow",
            BodyKind::Task => "task",
        }
    }

    pub(crate) fn parse(s: &str) -> BodyKind {
        match s {
            "workflow" => BodyKind::Workflow,
            "task" => BodyKind::Task,
            _ => BodyKind::App,
        }
    }
}

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
    AppointmentCreate,
    AppointmentUpdate,
    AppointmentDelete,
    TaskCreate,
    TaskComplete,
    TaskDelete,
    NoteCreate,
    NoteUpdate,
    NoteDelete,
    InboundMessage,
    OutboundMessage,
    Workflow,
}

/// What an event is about, which decides where its contact id is and what it says about the
/// contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `Contact*`: the contact is `id`; it carries the contact's tags and owner.
    Contact,
    /// `Opportunity*`: the opportunity is `id`, the contact `contactId`.
    Opportunity,
    /// `Appointment*`: everything under `appointment` (`contactId`, `assignedUserId`).
    Appointment,
    /// `Task*`, `Note*`, `*Message`: the contact is `contactId`; a task's assignee is
    /// `assignedTo`.
    Activity,
    /// A workflow's Webhook action.
    Workflow,
}

impl Subject {
    /// Whether its events say who owns the record (the contact's or the opportunity's
    /// assignee), as opposed to a task's or an appointment's.
    pub fn has_owner(self) -> bool {
        matches!(
            self,
            Subject::Contact | Subject::Opportunity | Subject::Workflow
        )
    }
}

impl EventType {
    /// Every supported event type, in documentation order.
    pub const ALL: [EventType; 24] = [
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
        EventType::AppointmentCreate,
        EventType::AppointmentUpdate,
        EventType::AppointmentDelete,
        EventType::TaskCreate,
        EventType::TaskComplete,
        EventType::TaskDelete,
        EventType::NoteCreate,
        EventType::NoteUpdate,
        EventType::NoteDelete,
        EventType::InboundMessage,
        EventType::OutboundMessage,
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
            EventType::AppointmentCreate => "AppointmentCreate",
            EventType::AppointmentUpdate => "AppointmentUpdate",
            EventType::AppointmentDelete => "AppointmentDelete",
            EventType::TaskCreate => "TaskCreate",
            EventType::TaskComplete => "TaskComplete",
            EventType::TaskDelete => "TaskDelete",
            EventType::NoteCreate => "NoteCreate",
            EventType::NoteUpdate => "NoteUpdate",
            EventType::NoteDelete => "NoteDelete",
            EventType::InboundMessage => "InboundMessage",
            EventType::OutboundMessage => "OutboundMessage",
            EventType::Workflow => "Workflow",
        }
    }

    /// The event type with exactly this name.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// What the event is about.
    pub fn subject(self) -> Subject {
        let name = self.name();
        if self == EventType::Workflow {
            Subject::Workflow
        } else if name.starts_with("Contact") {
            Subject::Contact
        } else if name.starts_with("Opportunity") {
            Subject::Opportunity
        } else if name.starts_with("Appointment") {
            Subject::Appointment
        } else {
            Subject::Activity
        }
    }

    pub fn is_opportunity(self) -> bool {
        self.subject() == Subject::Opportunity
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

impl Event {
    /// Who the event says its record is assigned to (the opportunity for an opportunity
    /// event, else the contact): `None` when it does not say, `Some(None)` when it says
    /// nobody (an `OpportunityAssignedToUpdate` without `assignedTo`). A workflow body's
    /// email is looked up with `by_email`; one not found leaves it unsaid.
    /// Only contact, opportunity and workflow events describe an owner; a task's or an
    /// appointment's assignee is not the contact's.
    pub fn assignment(&self, by_email: impl Fn(&str) -> Option<UserId>) -> Option<Option<UserId>> {
        if !self.event_type.subject().has_owner() {
            return None;
        }
        match &self.assigned_user {
            Some(AssignedUser::Id(id)) => Some(Some(id.clone())),
            Some(AssignedUser::Email(email)) => by_email(email).map(Some),
            None if self.event_type == EventType::OpportunityAssignedToUpdate => Some(None),
            None => None,
        }
    }
}

/// What a webhook body parsed into.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// An event the rules can decide on.
    Event(Box<Event>),
    /// The app was installed into or uninstalled from a location or a company (`INSTALL`,
    /// `UNINSTALL`). Acted on in app mode; rules never see it.
    App(AppChange),
    /// A well-formed body of a type autofollow does not act on (`UserCreate`, …). Rules never
    /// match it.
    Unsupported {
        event_type: String,
        location_id: Option<LocationId>,
    },
}

impl Parsed {
    /// The type of a body the rules never see (`INSTALL`, `UserCreate`, …); `None` for an
    /// event.
    pub fn other_type(&self) -> Option<&str> {
        match self {
            Parsed::Event(_) => None,
            Parsed::App(change) if change.installed => Some("INSTALL"),
            Parsed::App(_) => Some("UNINSTALL"),
            Parsed::Unsupported { event_type, .. } => Some(event_type),
        }
    }
}

/// An `INSTALL` or `UNINSTALL` webhook: the documented fields, ids checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppChange {
    pub installed: bool,
    pub app_id: Option<String>,
    pub company_id: Option<String>,
    pub location_id: Option<LocationId>,
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
    #[error("field `{0}` is not a GoHighLevel id (1 to 64 letters, digits, `_` or `-`)")]
    InvalidId(&'static str),
    /// The body could not be received to its end (the sender broke it off).
    #[error("the body was not received to its end")]
    Incomplete,
}

impl ParseError {
    /// A fixed description of the kind of problem, for counting rejections.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::Json(_) => "body is not JSON",
            ParseError::NotObject => "body is not a JSON object",
            ParseError::MissingField(_) => "a required field is missing",
            ParseError::InvalidId(_) => "a field is not a GoHighLevel id",
            ParseError::Incomplete => "body not received to its end",
        }
    }
}

/// The id under `key`, checked; `None` when absent.
fn id<T>(obj: &Map<String, Value>, key: &str, field: &'static str) -> Result<Option<T>, ParseError>
where
    T: std::str::FromStr<Err = InvalidId>,
{
    text(obj, key)
        .map(|s| s.parse().map_err(|_| ParseError::InvalidId(field)))
        .transpose()
}

/// The id under `key`, checked and required.
fn required<T>(obj: &Map<String, Value>, key: &str, field: &'static str) -> Result<T, ParseError>
where
    T: std::str::FromStr<Err = InvalidId>,
{
    id(obj, key, field)?.ok_or(ParseError::MissingField(field))
}

/// A value that names an id without a type of its own (pipeline, stage), checked.
fn plain_id(obj: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ParseError> {
    match text(obj, key) {
        Some(s) if !is_valid_id(&s) => Err(ParseError::InvalidId(key)),
        other => Ok(other),
    }
}

/// The top-level keys GoHighLevel's webhooks carry besides custom fields: of app webhooks
/// (every documented event's example) and of workflow webhooks (the action's data format,
/// whose custom fields arrive as top-level keys named by their label). A `fields` path
/// starting with another key can only name a custom field (or nothing).
pub const STANDARD_KEYS: &[&str] = &[
    // App webhooks.
    "address1",
    "appId",
    "appointment",
    "assignedTo",
    "attachments",
    "body",
    "callDuration",
    "callStatus",
    "city",
    "companyId",
    "companyName",
    "completed",
    "contactId",
    "contentType",
    "conversationId",
    "conversationProviderId",
    "country",
    "customFields",
    "dateAdded",
    "dateOfBirth",
    "description",
    "direction",
    "dnd",
    "dndSettings",
    "dueDate",
    "email",
    "emailMessageId",
    "extension",
    "firstName",
    "from",
    "id",
    "isWhitelabelCompany",
    "lastName",
    "locationId",
    "locations",
    "messageId",
    "messageType",
    "monetaryValue",
    "name",
    "permissions",
    "phone",
    "pipelineId",
    "pipelineStageId",
    "planId",
    "postalCode",
    "role",
    "source",
    "state",
    "status",
    "stripeProductId",
    "subject",
    "tags",
    "threadId",
    "timestamp",
    "title",
    "to",
    "trial",
    "type",
    "userId",
    "versionId",
    "webhookId",
    "website",
    "whitelabelDetails",
    // Workflow webhooks.
    "attributionSource",
    "contact",
    "contact_id",
    "contact_source",
    "contact_type",
    "customData",
    "date_created",
    "first_name",
    "full_address",
    "full_name",
    "last_name",
    "lastAttributionSource",
    "lead_value",
    "location",
    "opportunity_name",
    "opportunity_source",
    "pipeline_id",
    "pipeline_name",
    "pipeline_stage",
    "pipleline_stage",
    "timezone",
    "triggerData",
    "user",
    "workflow",
];

/// Parses an app webhook body (the JSON GoHighLevel sends to an app's webhook URL).
pub fn parse_app(body: &[u8]) -> Result<Parsed, ParseError> {
    let raw: Value = serde_json::from_slice(body)?;
    app_event(raw)
}

/// Parses the body a workflow's Webhook action sends.
/// Always an [`Parsed::Event`]: every workflow body is one.
pub fn parse_workflow(body: &[u8]) -> Result<Parsed, ParseError> {
    let raw: Value = serde_json::from_slice(body)?;
    workflow_event(raw).map(|e| Parsed::Event(Box::new(e)))
}

/// Parses a body with the parser of its kind (the endpoint it was sent to).
pub fn parse(kind: BodyKind, body: &[u8]) -> Result<Parsed, ParseError> {
    match kind {
        BodyKind::App => parse_app(body),
        BodyKind::Workflow => parse_workflow(body),
        // Not a webhook: read by [`TaskBody::parse`].
        BodyKind::Task => Err(ParseError::NotObject),
    }
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
    if type_name == "INSTALL" || type_name == "UNINSTALL" {
        return Ok(Parsed::App(AppChange {
            installed: type_name == "INSTALL",
            app_id: text(obj, "appId"),
            company_id: plain_id(obj, "companyId")?,
            location_id: id(obj, "locationId", "locationId")?,
        }));
    }
    let event_type = match EventType::from_name(&type_name) {
        Some(t) if t != EventType::Workflow => t,
        _ => {
            return Ok(Parsed::Unsupported {
                event_type: type_name,
                location_id: id(obj, "locationId", "locationId").ok().flatten(),
            });
        }
    };
    let location_id = required(obj, "locationId", "locationId")?;
    let (contact_id, opportunity_id, tags, assigned) = match event_type.subject() {
        Subject::Opportunity => {
            let contact = required(obj, "contactId", "contactId")?;
            let tags = sent_tags(obj);
            (
                contact,
                id(obj, "id", "id")?,
                tags,
                id(obj, "assignedTo", "assignedTo")?,
            )
        }
        Subject::Appointment => {
            let a = obj.get("appointment").and_then(Value::as_object);
            let a = a.ok_or(ParseError::MissingField("appointment.contactId"))?;
            let contact = required(a, "contactId", "appointment.contactId")?;
            let assigned = id(a, "assignedUserId", "appointment.assignedUserId")?;
            (contact, None, None, assigned)
        }
        Subject::Activity => {
            let contact = required(obj, "contactId", "contactId")?;
            (contact, None, None, id(obj, "assignedTo", "assignedTo")?)
        }
        Subject::Contact | Subject::Workflow => {
            let contact = required(obj, "id", "id")?;
            let tags = contact_tags(event_type, obj);
            (contact, None, tags, id(obj, "assignedTo", "assignedTo")?)
        }
    };
    let event = Event {
        event_type,
        location_id,
        contact_id,
        opportunity_id,
        source: match event_type.subject() {
            Subject::Contact | Subject::Opportunity => text(obj, "source"),
            _ => None,
        },
        tags,
        assigned_user: assigned.map(AssignedUser::Id),
        pipeline_id: plain_id(obj, "pipelineId")?,
        pipeline_name: None,
        stage_id: plain_id(obj, "pipelineStageId")?,
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
    let location_id = match obj.get("location").and_then(Value::as_object) {
        Some(location) => required(location, "id", "location.id")?,
        None => return Err(ParseError::MissingField("location.id")),
    };
    let contact_id = required(obj, "contact_id", "contact_id")?;
    let workflow = obj.get("workflow").and_then(Value::as_object);
    let assigned_user = match obj.get("user").and_then(Value::as_object) {
        Some(u) => match id(u, "id", "user.id")? {
            Some(id) => Some(AssignedUser::Id(id)),
            None => text(u, "email").map(AssignedUser::Email),
        },
        None => None,
    };
    let pipeline_id = plain_id(obj, "pipeline_id")?;
    // Only opportunity triggers send `id`, and then it is the opportunity's.
    let opportunity_id = match pipeline_id.is_some() {
        true => id(obj, "id", "id")?,
        false => None,
    };
    let opportunity_id = match opportunity_id {
        Some(o) => Some(o),
        None => id(obj, "opportunity_id", "opportunity_id")?,
    };
    Ok(Event {
        event_type: EventType::Workflow,
        location_id,
        contact_id,
        opportunity_id,
        source: text(obj, "contact_source").or_else(|| text(obj, "source")),
        tags: sent_tags(obj),
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

/// The tags a body sent: `None` (unknown) when it has no `tags` field or it is `null`, so a
/// body that does not describe the tags never makes every known tag count as removed.
fn sent_tags(obj: &Map<String, Value>) -> Option<Vec<String>> {
    obj.get("tags").filter(|t| !t.is_null()).map(tag_list)
}

/// A contact event's tags. A `ContactTagUpdate` is about the tag list, and GoHighLevel leaves
/// empty fields out, so one without `tags` says the contact has none left; any other contact
/// event without `tags` leaves them unknown.
fn contact_tags(event_type: EventType, obj: &Map<String, Value>) -> Option<Vec<String>> {
    match (sent_tags(obj), event_type) {
        (None, EventType::ContactTagUpdate) => Some(Vec::new()),
        (tags, _) => tags,
    }
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

    /// The event of a workflow body, when it parses.
    fn workflow(v: &Value) -> Option<Event> {
        match parse_workflow(v.to_string().as_bytes()) {
            Ok(Parsed::Event(e)) => Some(*e),
            _ => None,
        }
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
    fn a_contact_event_without_tags_leaves_them_unknown_except_a_tag_update() {
        for tags in [json!(null), json!("absent")] {
            let mut body = json!({"type": "ContactUpdate", "locationId": "L", "id": "C"});
            if tags.is_null() {
                body["tags"] = tags;
            }
            assert_eq!(app_event(body.clone()).tags, None, "{body}");
            body["type"] = json!("ContactTagUpdate");
            assert_eq!(app_event(body.clone()).tags, Some(vec![]), "{body}");
        }
        let wf = workflow(&json!({"contact_id": "C", "location": {"id": "L"}}));
        assert_eq!(wf.and_then(|e| e.tags), None);
        let wf = workflow(&json!({"contact_id": "C", "location": {"id": "L"}, "tags": ""}));
        assert_eq!(wf.and_then(|e| e.tags), Some(vec![]));
    }

    #[test]
    fn opportunity_event_takes_contact_from_contact_id_and_has_unknown_tags() {
        let e = app_event(json!({
            "type": "OpportunityStageUpdate", "locationId": "L", "id": "O", "contactId": "C",
            "pipelineId": "P", "pipelineStageId": "S", "status": "open", "assignedTo": "U"
        }));
        assert_eq!(e.contact_id.as_str(), "C");
        assert_eq!(e.opportunity_id, OpportunityId::parse("O").ok());
        assert_eq!(e.tags, None);
        assert_eq!(e.stage_id.as_deref(), Some("S"));
        assert_eq!(
            e.assigned_user,
            UserId::parse("U").ok().map(AssignedUser::Id)
        );
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
    fn ids_that_are_not_ghl_ids_are_named_errors() {
        let err = |v: Value| app(v).err().map(|e| e.to_string());
        for (body, field) in [
            (
                json!({"type": "ContactCreate", "locationId": "L", "id": ".."}),
                "id",
            ),
            (
                json!({"type": "ContactCreate", "locationId": "a/b", "id": "C"}),
                "locationId",
            ),
            (
                json!({"type": "ContactCreate", "locationId": "L", "id": "C", "assignedTo": "u u"}),
                "assignedTo",
            ),
            (
                json!({"type": "OpportunityCreate", "locationId": "L", "id": ".", "contactId": "C"}),
                "id",
            ),
            (
                json!({"type": "OpportunityCreate", "locationId": "L", "id": "O", "contactId": "C?x"}),
                "contactId",
            ),
            (
                json!({"type": "OpportunityStageUpdate", "locationId": "L", "id": "O", "contactId": "C", "pipelineStageId": "s/../x"}),
                "pipelineStageId",
            ),
            (
                json!({"type": "OpportunityStageUpdate", "locationId": "L", "id": "O", "contactId": "C", "pipelineId": "p%2F"}),
                "pipelineId",
            ),
        ] {
            let message = err(body).unwrap_or_default();
            assert!(
                message.starts_with(&format!("field `{field}` is not")),
                "{message}"
            );
        }
        let workflow = |v: Value| {
            parse_workflow(v.to_string().as_bytes())
                .err()
                .map(|e| e.to_string())
        };
        let message = workflow(json!({"contact_id": "..", "location": {"id": "L"}}));
        assert!(message.is_some_and(|m| m.contains("`contact_id`")));
        let message = workflow(json!({"contact_id": "C", "location": {"id": "L 1"}}));
        assert!(message.is_some_and(|m| m.contains("`location.id`")));
        let message = workflow(
            json!({"contact_id": "C", "location": {"id": "L"}, "pipeline_id": "P", "id": "a.b"}),
        );
        assert!(message.is_some_and(|m| m.contains("`id`")));
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
        let r = app(json!({"type": "UserCreate", "id": "U", "locationId": "L"})).ok();
        assert_eq!(
            r,
            Some(Parsed::Unsupported {
                event_type: "UserCreate".into(),
                location_id: LocationId::parse("L").ok()
            })
        );
        let r = app(json!({"type": "UNINSTALL", "appId": "A", "companyId": "Co"})).ok();
        let change = AppChange {
            installed: false,
            app_id: Some("A".into()),
            company_id: Some("Co".into()),
            location_id: None,
        };
        assert_eq!(r, Some(Parsed::App(change)));
        // "Workflow" is our name for workflow webhooks, not an app event type.
        let r = app(json!({"type": "Workflow", "locationId": "L", "id": "C"})).ok();
        assert!(matches!(r, Some(Parsed::Unsupported { .. })));
    }

    #[test]
    fn workflow_tags_string_is_split_on_commas_and_trimmed() {
        let e = workflow(
            &json!({"contact_id": "C", "location": {"id": "L"}, "tags": "vip, webinar ,,hot"}),
        );
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
        let e = workflow(&body);
        let e = e.as_ref();
        assert_eq!(e.map(|e| e.event_type), Some(EventType::Workflow));
        assert_eq!(
            e.and_then(|e| e.opportunity_id.clone()),
            OpportunityId::parse("O").ok()
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
        let e = workflow(&correct);
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
