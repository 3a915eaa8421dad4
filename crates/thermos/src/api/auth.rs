//! Who is calling: the admin key (every project) or a project key (its
//! project only; another project's connection is a 404 to it).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::ExposeSecret;
use thermos_store::ConnectionRecord;

use super::AppState;
use super::error::{ApiError, ErrorKind};
use crate::api_key;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Project(String),
}

/// The project used when an admin names none.
pub const DEFAULT_PROJECT: &str = "default";

impl Caller {
    /// Whether this caller may see `record`.
    pub fn may_see(&self, record: &ConnectionRecord) -> bool {
        match self {
            Self::Admin => true,
            Self::Project(project) => *project == record.project,
        }
    }

    /// The project a new resource goes to: the caller's own, or for an
    /// admin the one named (default `default`). A project key naming another
    /// project is forbidden.
    pub fn project_for(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match (self, requested) {
            (Self::Admin, Some(p)) => Ok(p.to_owned()),
            (Self::Admin, None) => Ok(DEFAULT_PROJECT.to_owned()),
            (Self::Project(own), None) => Ok(own.clone()),
            (Self::Project(own), Some(p)) if p == own => Ok(own.clone()),
            (Self::Project(_), Some(_)) => Err(ApiError::new(
                ErrorKind::Forbidden,
                "this key may only act on its own project",
            )),
        }
    }

    /// The project filter a listing must apply.
    pub fn project_filter(&self, requested: Option<String>) -> Result<Option<String>, ApiError> {
        match self {
            Self::Admin => Ok(requested),
            Self::Project(_) => self.project_for(requested.as_deref()).map(Some),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let unauthorized = || {
            ApiError::new(
                ErrorKind::Unauthorized,
                "missing or invalid API key (Authorization: Bearer <key>)",
            )
        };
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(unauthorized)?;
        if let Some(admin) = &state.admin_key
            && api_key::secrets_equal(admin.expose_secret(), presented)
        {
            return Ok(Self::Admin);
        }
        let key_id = api_key::key_id(presented).ok_or_else(unauthorized)?;
        let record = state
            .engine
            .store()
            .find_api_key(key_id)
            .await?
            .ok_or_else(unauthorized)?;
        if api_key::matches(&record, presented) {
            Ok(Self::Project(record.project))
        } else {
            Err(unauthorized())
        }
    }
}
