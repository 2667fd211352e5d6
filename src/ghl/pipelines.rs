//! Pipeline and stage names for one location, from GoHighLevel's
//! `GET /opportunities/pipelines?locationId=…` response.
//!
//! App webhooks carry only `pipelineId` and `pipelineStageId`; rules may name pipelines and
//! stages. This directory answers the rules engine's [`Resolver`] questions from a response
//! body, so `autofollow explain --pipelines FILE` works offline and the service can cache it.

use std::collections::HashMap;

use serde::Deserialize;

use crate::model::ids::LocationId;
use crate::rules::Resolver;

/// Names by id, for one location's pipelines and their stages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pipelines {
    pipelines: HashMap<String, String>,
    stages: HashMap<String, String>,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    pipelines: Vec<PipelineDto>,
}

#[derive(Deserialize)]
struct PipelineDto {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    stages: Vec<serde_json::Value>,
}

impl Pipelines {
    /// Reads a `GET /opportunities/pipelines` response body.
    pub fn from_response(body: &[u8]) -> Result<Pipelines, serde_json::Error> {
        let response: Response = serde_json::from_slice(body)?;
        let mut out = Pipelines::default();
        for p in response.pipelines {
            if let Some(name) = p.name {
                out.pipelines.insert(p.id, name);
            }
            // The OpenAPI file types stages loosely; real responses hold {id, name, …} objects.
            for stage in p.stages {
                let id = stage.get("id").and_then(|v| v.as_str());
                let name = stage.get("name").and_then(|v| v.as_str());
                if let (Some(id), Some(name)) = (id, name) {
                    out.stages.insert(id.to_owned(), name.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Every pipeline: (id, name).
    pub fn pipelines(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pipelines.iter().map(|(i, n)| (i.as_str(), n.as_str()))
    }

    /// Every stage of every pipeline: (id, name).
    pub fn stages(&self) -> impl Iterator<Item = (&str, &str)> {
        self.stages.iter().map(|(i, n)| (i.as_str(), n.as_str()))
    }
}

impl Resolver for Pipelines {
    fn pipeline_name(&self, _location: &LocationId, pipeline_id: &str) -> Option<&str> {
        self.pipelines.get(pipeline_id).map(String::as_str)
    }

    fn stage_name(&self, _location: &LocationId, stage_id: &str) -> Option<&str> {
        self.stages.get(stage_id).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_pipelines_response() {
        let body = br#"{"pipelines":[{"id":"P1","name":"Sales","stages":[
            {"id":"S1","name":"New"},{"id":"S2","name":"Closed Won"},{"bad":1}]}]}"#;
        let p = Pipelines::from_response(body).ok().unwrap_or_default();
        let loc = LocationId::parse("L").unwrap();
        assert_eq!(p.pipeline_name(&loc, "P1"), Some("Sales"));
        assert_eq!(p.stage_name(&loc, "S2"), Some("Closed Won"));
        assert_eq!(p.stage_name(&loc, "S3"), None);
    }
}
