//! `GET /rooms/{roomId}/hierarchy` (spaces).

use axum::Json;
use axum::extract::State;
use ruma::api::client::space::get_hierarchy;
use serde_json::{Value, json};

use crate::error::Result;
use crate::http::auth::Authed;
use crate::http::ruma::{AppState, Ruma};
use crate::rooms::spaces::HierarchyRequest;

pub async fn hierarchy(
    State(s): State<AppState>,
    Authed(who): Authed,
    Ruma(req): Ruma<get_hierarchy::v1::Request>,
) -> Result<Json<Value>> {
    let to_usize = |n: ruma::UInt| usize::try_from(u64::from(n)).unwrap_or(usize::MAX);
    let page = s.rooms.hierarchy(&HierarchyRequest {
        root: &req.room_id,
        user: &who.user_id,
        from: req.from.as_deref(),
        limit: req.limit.map(to_usize),
        max_depth: req.max_depth.map(to_usize),
        suggested_only: req.suggested_only,
    })?;
    let mut body = json!({"rooms": page.rooms});
    if let Some(next) = page.next_batch {
        body["next_batch"] = json!(next);
    }
    Ok(Json(body))
}
