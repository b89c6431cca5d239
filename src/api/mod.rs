//! The Client-Server API: thin handlers that parse (via ruma's types), call a service and
//! serialize. No Matrix rule lives here; the services own behaviour.

pub mod account;
pub mod devices;
pub mod discovery;

use axum::Router;
use axum::routing::get;
use ruma::api::client::{account as acc, device, session};

use crate::http::ruma::{AppState, route};

/// Every client-API route.
pub fn client_routes() -> Router<AppState> {
    let r = Router::new()
        .route("/_matrix/client/versions", get(discovery::versions))
        .route(
            "/.well-known/matrix/client",
            get(discovery::well_known_client),
        )
        .route(
            "/.well-known/matrix/server",
            get(discovery::well_known_server),
        )
        .route(
            "/_matrix/client/v3/capabilities",
            get(discovery::capabilities),
        )
        .route(
            "/_matrix/client/r0/capabilities",
            get(discovery::capabilities),
        )
        .route("/_matrix/client/v3/login", get(account::login_types))
        .route("/_matrix/client/r0/login", get(account::login_types));
    let r =
        route::<acc::get_username_availability::v3::Request, _, _>(r, account::register_available);
    let r = route::<acc::register::v3::Request, _, _>(r, account::register);
    let r = route::<acc::check_registration_token_validity::v1::Request, _, _>(
        r,
        account::registration_token_validity,
    );
    let r = route::<session::login::v3::Request, _, _>(r, account::login);
    let r = route::<session::logout::v3::Request, _, _>(r, account::logout);
    let r = route::<session::logout_all::v3::Request, _, _>(r, account::logout_all);
    let r = route::<session::refresh_token::v3::Request, _, _>(r, account::refresh);
    let r = route::<acc::whoami::v3::Request, _, _>(r, account::whoami);
    let r = route::<acc::change_password::v3::Request, _, _>(r, account::change_password);
    let r = route::<acc::deactivate::v3::Request, _, _>(r, account::deactivate);
    let r = route::<device::get_devices::v3::Request, _, _>(r, devices::list);
    let r = route::<device::get_device::v3::Request, _, _>(r, devices::get);
    let r = route::<device::update_device::v3::Request, _, _>(r, devices::update);
    let r = route::<device::delete_device::v3::Request, _, _>(r, devices::delete);
    route::<device::delete_devices::v3::Request, _, _>(r, devices::delete_many)
}
