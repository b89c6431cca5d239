//! Push rules, read-only for now: every user has the spec's default ruleset. Clients
//! (matrix-js-sdk among them) fetch it before their first sync. Editing rules, pushers and
//! push-gateway delivery come with the notifications milestone.

use ruma::api::client::push::{get_pushrules_all, get_pushrules_global_scope};
use ruma::push::Ruleset;

use crate::http::auth::Authed;
use crate::http::ruma::{Ruma, RumaResponse};

pub async fn all(
    Authed(who): Authed,
    Ruma(_): Ruma<get_pushrules_all::v3::Request>,
) -> RumaResponse<get_pushrules_all::v3::Response> {
    RumaResponse(get_pushrules_all::v3::Response::new(Ruleset::server_default(&who.user_id)))
}

pub async fn global(
    Authed(who): Authed,
    Ruma(_): Ruma<get_pushrules_global_scope::v3::Request>,
) -> RumaResponse<get_pushrules_global_scope::v3::Response> {
    RumaResponse(get_pushrules_global_scope::v3::Response::new(Ruleset::server_default(
        &who.user_id,
    )))
}
