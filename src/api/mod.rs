//! The Client-Server API: thin handlers that parse (via ruma's types), call a service and
//! serialize. No Matrix rule lives here; the services own behaviour.

pub mod account;
pub mod admin;
pub mod devices;
pub mod directory;
pub mod discovery;
pub mod e2ee_keys;
pub mod key_backup;
pub mod legacy;
pub mod media;
pub mod moderation;
pub mod presence;
pub mod push;
pub mod receipts;
pub mod relations;
pub mod rooms;
pub mod search;
pub mod spaces;
pub mod sync;
pub mod sync_socket;
pub mod tags;
pub mod to_device;
pub mod typing;
pub mod upgrade;
pub mod user_data;

use axum::Router;
use axum::routing::{get, post, put};
use ruma::api::client::{
    account as acc, config, device, membership, message, redact, room, session, state,
};

use crate::http::ruma::{AppState, route, route_empty_last_arg};

/// Every client-API route.
pub fn client_routes() -> Router<AppState> {
    let r = Router::new()
        .route("/_matrix/client/versions", get(discovery::versions))
        .route("/.well-known/matrix/client", get(discovery::well_known_client))
        .route("/.well-known/matrix/server", get(discovery::well_known_server))
        .route("/_matrix/client/v3/capabilities", get(discovery::capabilities))
        .route("/_matrix/client/r0/capabilities", get(discovery::capabilities))
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
    let r = route::<device::delete_devices::v3::Request, _, _>(r, devices::delete_many);
    let r = route::<room::create_room::v3::Request, _, _>(r, rooms::create);
    let r = route::<membership::join_room_by_id::v3::Request, _, _>(r, rooms::join_by_id);
    let r = route::<membership::join_room_by_id_or_alias::v3::Request, _, _>(
        r,
        rooms::join_by_id_or_alias,
    );
    let r = route::<membership::invite_user::v3::Request, _, _>(r, rooms::invite);
    let r = route::<membership::leave_room::v3::Request, _, _>(r, rooms::leave);
    let r = route::<membership::forget_room::v3::Request, _, _>(r, rooms::forget);
    let r = route::<membership::kick_user::v3::Request, _, _>(r, rooms::kick);
    let r = route::<membership::ban_user::v3::Request, _, _>(r, rooms::ban);
    let r = route::<membership::unban_user::v3::Request, _, _>(r, rooms::unban);
    let r = route::<membership::joined_rooms::v3::Request, _, _>(r, rooms::joined_rooms);
    let r = route::<membership::get_member_events::v3::Request, _, _>(r, rooms::members);
    let r = route::<membership::joined_members::v3::Request, _, _>(r, rooms::joined_members);
    let r = route::<message::send_message_event::v3::Request, _, _>(r, rooms::send_message);
    let r = route::<message::get_message_events::v3::Request, _, _>(r, rooms::messages);
    let r = route::<state::send_state_event::v3::Request, _, _>(r, rooms::send_state);
    let r =
        route_empty_last_arg::<state::send_state_event::v3::Request, _, _>(r, rooms::send_state);
    let r = route_empty_last_arg::<state::get_state_event_for_key::v3::Request, _, _>(
        r,
        rooms::state_for_key,
    );
    let r = route::<state::get_state_events::v3::Request, _, _>(r, rooms::state);
    let r = route::<state::get_state_event_for_key::v3::Request, _, _>(r, rooms::state_for_key);
    let r = route::<redact::redact_event::v3::Request, _, _>(r, rooms::redact);
    let r = route::<room::get_room_event::v3::Request, _, _>(r, rooms::event);
    let r = route::<ruma::api::client::filter::create_filter::v3::Request, _, _>(
        r,
        user_data::create_filter,
    );
    let r =
        route::<ruma::api::client::filter::get_filter::v3::Request, _, _>(r, user_data::get_filter);
    let r = route::<config::set_global_account_data::v3::Request, _, _>(
        r,
        user_data::set_global_account_data,
    );
    let r = route::<config::get_global_account_data::v3::Request, _, _>(
        r,
        user_data::get_global_account_data,
    );
    let r = route::<config::set_room_account_data::v3::Request, _, _>(
        r,
        user_data::set_room_account_data,
    );
    let r = route::<config::get_room_account_data::v3::Request, _, _>(
        r,
        user_data::get_room_account_data,
    );
    let r =
        route::<ruma::api::client::alias::get_alias::v3::Request, _, _>(r, directory::get_alias);
    let r = route::<ruma::api::client::alias::create_alias::v3::Request, _, _>(
        r,
        directory::create_alias,
    );
    let r = route::<ruma::api::client::alias::delete_alias::v3::Request, _, _>(
        r,
        directory::delete_alias,
    );
    let r = route::<room::aliases::v3::Request, _, _>(r, directory::room_aliases);
    let r = route::<ruma::api::client::directory::get_room_visibility::v3::Request, _, _>(
        r,
        directory::get_visibility,
    );
    let r = route::<ruma::api::client::directory::set_room_visibility::v3::Request, _, _>(
        r,
        directory::set_visibility,
    );
    let r = route::<ruma::api::client::directory::get_public_rooms::v3::Request, _, _>(
        r,
        directory::public_rooms,
    );
    let r = route::<ruma::api::client::directory::get_public_rooms_filtered::v3::Request, _, _>(
        r,
        directory::public_rooms_filtered,
    );
    let r = route::<ruma::api::client::context::get_context::v3::Request, _, _>(r, rooms::context);
    let r = route::<room::get_event_by_timestamp::v1::Request, _, _>(r, rooms::timestamp_to_event);
    let r = route::<ruma::api::client::receipt::create_receipt::v3::Request, _, _>(
        r,
        receipts::create_receipt,
    );
    let r = route::<ruma::api::client::read_marker::set_read_marker::v3::Request, _, _>(
        r,
        receipts::set_read_marker,
    );
    // Push rules, pushers, notifications.
    let r = {
        use ruma::api::client::push as p;
        let r = route::<p::get_pushrules_all::v3::Request, _, _>(r, push::all);
        let r = route::<p::get_pushrules_global_scope::v3::Request, _, _>(r, push::global);
        let r = route::<p::get_pushrule::v3::Request, _, _>(r, push::get_rule);
        let r = route::<p::set_pushrule::v3::Request, _, _>(r, push::set_rule);
        let r = route::<p::delete_pushrule::v3::Request, _, _>(r, push::delete_rule);
        let r = route::<p::get_pushrule_enabled::v3::Request, _, _>(r, push::get_enabled);
        let r = route::<p::set_pushrule_enabled::v3::Request, _, _>(r, push::set_enabled);
        let r = route::<p::get_pushrule_actions::v3::Request, _, _>(r, push::get_actions);
        let r = route::<p::set_pushrule_actions::v3::Request, _, _>(r, push::set_actions);
        let r = route::<p::get_pushers::v3::Request, _, _>(r, push::pushers);
        let r = route::<p::set_pusher::v3::Request, _, _>(r, push::set_pusher);
        route::<p::get_notifications::v3::Request, _, _>(r, push::notifications)
    };
    let r = route::<ruma::api::client::keys::upload_keys::v3::Request, _, _>(r, e2ee_keys::upload);
    let r = route::<ruma::api::client::keys::get_keys::v3::Request, _, _>(r, e2ee_keys::query);
    let r = route::<ruma::api::client::keys::claim_keys::v3::Request, _, _>(r, e2ee_keys::claim);
    let r =
        route::<ruma::api::client::keys::get_key_changes::v3::Request, _, _>(r, e2ee_keys::changes);
    let r = route::<ruma::api::client::keys::upload_signing_keys::v3::Request, _, _>(
        r,
        e2ee_keys::upload_signing,
    );
    let r = route::<ruma::api::client::keys::upload_signatures::v3::Request, _, _>(
        r,
        e2ee_keys::upload_signatures,
    );
    let r = key_backup_routes(r);
    let r = rooms_extra_routes(r);
    let r = media::routes(r);
    let r = route::<ruma::api::client::typing::create_typing_event::v3::Request, _, _>(
        r,
        typing::set_typing,
    );
    let r = route::<ruma::api::client::presence::set_presence::v3::Request, _, _>(
        r,
        presence::set_status,
    );
    let r = route::<ruma::api::client::presence::get_presence::v3::Request, _, _>(
        r,
        presence::get_status,
    );
    let r = route::<ruma::api::client::sync::sync_events::v3::Request, _, _>(r, sync::sync);
    let r = r.route(sync_socket::PATH, axum::routing::get(sync_socket::connect));
    let r = {
        use ruma::api::client::relations as rel;
        let r = route::<rel::get_relating_events::v1::Request, _, _>(r, relations::relating);
        let r = route::<rel::get_relating_events_with_rel_type::v1::Request, _, _>(
            r,
            relations::relating_with_rel_type,
        );
        let r = route::<rel::get_relating_events_with_rel_type_and_event_type::v1::Request, _, _>(
            r,
            relations::relating_with_rel_type_and_event_type,
        );
        route::<ruma::api::client::threads::get_threads::v1::Request, _, _>(r, relations::threads)
    };
    let r = route::<ruma::api::client::to_device::send_event_to_device::v3::Request, _, _>(
        r,
        to_device::send,
    );
    let r = route::<ruma::api::client::user_directory::search_users::v3::Request, _, _>(
        r,
        search::user_directory,
    );
    let mut r =
        route::<ruma::api::client::search::search_events::v3::Request, _, _>(r, search::search);
    for version in ["r0", "v3"] {
        r = r
            .route(&format!("/_matrix/client/{version}/account/3pid"), get(discovery::threepids))
            .route(
                &format!("/_matrix/client/{version}/thirdparty/protocols"),
                get(discovery::thirdparty_protocols),
            )
            .route(
                &format!("/_matrix/client/{version}/voip/turnServer"),
                get(discovery::turn_server),
            )
            .route(
                &format!("/_matrix/client/{version}/rooms/{{room_id}}/send/{{event_type}}"),
                post(legacy::send_without_txn),
            )
            .route(
                &format!("/_matrix/client/{version}/rooms/{{room_id}}/initialSync"),
                get(legacy::room_initial_sync),
            )
            .route(&format!("/_matrix/client/{version}/events"), get(legacy::events));
        r = r
            .route(
                &format!("/_matrix/client/{version}/profile/{{user_id}}"),
                get(user_data::get_profile),
            )
            .route(
                &format!("/_matrix/client/{version}/profile/{{user_id}}/{{field}}"),
                get(user_data::get_profile_field).merge(put(user_data::set_profile_field)),
            );
    }
    r
}

/// `/room_keys`: server-side key backups.
fn key_backup_routes(r: Router<AppState>) -> Router<AppState> {
    use ruma::api::client::backup as b;
    let r = route::<b::create_backup_version::v3::Request, _, _>(r, key_backup::create_version);
    let r = route::<b::get_latest_backup_info::v3::Request, _, _>(r, key_backup::latest_version);
    let r = route::<b::get_backup_info::v3::Request, _, _>(r, key_backup::get_version);
    let r = route::<b::update_backup_version::v3::Request, _, _>(r, key_backup::update_version);
    let r = route::<b::delete_backup_version::v3::Request, _, _>(r, key_backup::delete_version);
    let r = route::<b::add_backup_keys::v3::Request, _, _>(r, key_backup::put_keys);
    let r = route::<b::add_backup_keys_for_room::v3::Request, _, _>(r, key_backup::put_room_keys);
    let r =
        route::<b::add_backup_keys_for_session::v3::Request, _, _>(r, key_backup::put_session_key);
    let r = route::<b::get_backup_keys::v3::Request, _, _>(r, key_backup::get_keys);
    let r = route::<b::get_backup_keys_for_room::v3::Request, _, _>(r, key_backup::get_room_keys);
    let r =
        route::<b::get_backup_keys_for_session::v3::Request, _, _>(r, key_backup::get_session_key);
    let r = route::<b::delete_backup_keys::v3::Request, _, _>(r, key_backup::delete_keys);
    let r =
        route::<b::delete_backup_keys_for_room::v3::Request, _, _>(r, key_backup::delete_room_keys);
    route::<b::delete_backup_keys_for_session::v3::Request, _, _>(r, key_backup::delete_session_key)
}

/// Spaces, tags, room upgrades, reports, OpenID tokens.
fn rooms_extra_routes(r: Router<AppState>) -> Router<AppState> {
    use ruma::api::client::{account::request_openid_token, space, tag};
    let r = route::<space::get_hierarchy::v1::Request, _, _>(r, spaces::hierarchy);
    let r = route::<tag::get_tags::v3::Request, _, _>(r, tags::get);
    let r = route::<tag::create_tag::v3::Request, _, _>(r, tags::put);
    let r = route::<tag::delete_tag::v3::Request, _, _>(r, tags::delete);
    let r = route::<room::upgrade_room::v3::Request, _, _>(r, upgrade::upgrade);
    let r = route::<room::report_content::v3::Request, _, _>(r, moderation::report_event);
    let r = route::<room::report_room::v3::Request, _, _>(r, moderation::report_room);
    let r = route::<request_openid_token::v3::Request, _, _>(r, moderation::request_openid_token);
    r.route("/_matrix/federation/v1/openid/userinfo", get(moderation::openid_userinfo))
}
