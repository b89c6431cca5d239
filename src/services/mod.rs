//! Services: the homeserver's behaviour, independent of HTTP.
//!
//! **API Boundary.** `api/` (and later `federation/`, `appservices/`) call services; services
//! call `storage`. A service never sees a request or a status code: it returns
//! [`crate::error::Error`] values that `http::error` maps to Matrix errors.

pub mod accounts;
pub mod device_lists;
pub mod e2ee_keys;
pub mod key_backup;
pub mod lazy_members;
pub mod media;
pub mod moderation;
pub mod notifications;
pub mod passwords;
pub mod presence;
pub mod push;
pub mod pushers;
pub mod ratelimit;
pub mod receipts;
pub mod streams;
pub mod to_device;
pub mod tokens;
pub mod typing;
pub mod uia;
pub mod unread;
pub mod user_data;
pub mod user_directory;

use std::sync::Arc;

use axon_federation::keys::SigningKey;

use crate::config::Config;
use crate::error::Result;
use crate::rooms::{RoomLimits, Rooms};
use crate::storage::Store;

/// Every service, built once at start-up and shared by all requests.
pub struct Services {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub accounts: accounts::Accounts,
    /// Whose device lists changed when (the device-list stream).
    pub device_lists: Arc<device_lists::DeviceLists>,
    /// Device, one-time and fallback keys for end-to-end encryption.
    pub e2ee_keys: e2ee_keys::E2eeKeys,
    pub rooms: Rooms,
    pub user_data: user_data::UserData,
    /// Events sent per user (`limits.events`), shared with the rooms service.
    pub event_limiter: Arc<ratelimit::RateLimiter>,
    pub unread: unread::Unread,
    /// Member events each device was sent (lazy-loading in `/sync`).
    pub lazy_members: lazy_members::LazyMembers,
    /// The open `/sync` WebSockets, one per device (`api::sync_socket`).
    pub sync_sockets: crate::api::sync_socket::Sockets,
    /// Send-to-device messages and their stream.
    pub to_device: to_device::ToDevice,
    /// Server-side key backups (`/room_keys`).
    pub key_backup: key_backup::KeyBackup,
    /// Who is typing in which room (in memory).
    pub typing: Arc<typing::Typing>,
    /// Read receipts and their stream.
    pub receipts: receipts::Receipts,
    /// Online status and its stream (in memory).
    pub presence: Arc<presence::Presence>,
    /// The HTTP client for requests to other addresses, behind the address policy.
    pub outbound: crate::outbound::Outbound,
    /// The media repository (uploads, downloads, thumbnails, URL previews).
    pub media: media::Media,
    /// Users' push rules (stored as `m.push_rules` account data).
    pub push_rules: push::PushRules,
    /// Pushers and push-gateway delivery.
    pub pushers: pushers::Pushers,
    /// The user directory's index (`/user_directory/search`).
    pub user_directory: Arc<user_directory::UserDirectory>,
}

impl Services {
    pub async fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        key: Arc<SigningKey>,
    ) -> Result<Arc<Self>> {
        let passwords = passwords::Passwords::new(config.limits.password_queue_per_core)?;
        let event_limiter = Arc::new(ratelimit::RateLimiter::new(config.limits.events));
        let limits = RoomLimits {
            events: event_limiter.clone(),
            max_initial_state: config.limits.create_room_max_initial_state,
            max_invites: config.limits.create_room_max_invites,
        };
        let rooms = Rooms::load(config.server_name.clone(), key, store.clone(), limits).await?;
        let device_lists =
            Arc::new(device_lists::DeviceLists::load(store.clone(), rooms.notifier.clone()).await?);
        let user_directory = Arc::new(
            user_directory::UserDirectory::load(
                &store,
                &config.server_name,
                config.user_directory.search_all_users,
            )
            .await?,
        );
        let accounts = accounts::Accounts::new(
            config.clone(),
            store.clone(),
            passwords,
            device_lists.clone(),
            user_directory.clone(),
        );
        let user_data =
            user_data::UserData::load(store.clone(), rooms.notifier.clone(), &config.limits)
                .await?;
        let to_device = to_device::ToDevice::load(
            store.clone(),
            rooms.notifier.clone(),
            config.server_name.clone(),
            config.limits.to_device_max_messages,
            config.limits.to_device_max_pending,
        )
        .await?;
        let receipts = receipts::Receipts::load(store.clone(), rooms.notifier.clone()).await?;
        let key_backup =
            key_backup::KeyBackup::new(store.clone(), config.limits.max_backup_keys_per_version);
        let e2ee_keys = e2ee_keys::E2eeKeys::new(
            config.server_name.clone(),
            store.clone(),
            device_lists.clone(),
        );
        let outbound = crate::outbound::Outbound::new(&config.outbound)
            .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
        let media = media::Media::new(&config, store.clone()).await?;
        let pushers =
            pushers::Pushers::load(store.clone(), outbound.clone(), config.push.clone()).await?;
        let rooms_notifier = rooms.notifier.clone();
        let presence_enabled = config.presence.enabled;
        let services = Arc::new(Self {
            config,
            store,
            accounts,
            device_lists,
            e2ee_keys,
            rooms,
            user_data,
            event_limiter,
            unread: unread::Unread::default(),
            lazy_members: lazy_members::LazyMembers::default(),
            sync_sockets: crate::api::sync_socket::Sockets::default(),
            to_device,
            key_backup,
            typing: typing::Typing::start(rooms_notifier.clone()),
            receipts,
            presence: presence::Presence::start(presence_enabled, rooms_notifier),
            outbound,
            media,
            push_rules: push::PushRules::default(),
            pushers,
            user_directory,
        });
        // Push rules are evaluated once events are durable, off the send path; pushes need
        // the services (weakly held: they end with the server).
        services.pushers.set_services(Arc::downgrade(&services));
        if services.config.push.enabled {
            services.rooms.committer.set_post_commit(notifications::start(
                Arc::downgrade(&services),
                services.config.push.queue_events,
                services.rooms.committer.current(),
            ));
        }
        notifications::start_pruning(
            Arc::downgrade(&services),
            services.config.push.notification_retention_days,
        );
        // A device-list change wakes everyone sharing a room with the user.
        let weak = Arc::downgrade(&services);
        services.device_lists.set_audience(Box::new(move |user| {
            weak.upgrade().map(|s| s.rooms.sharing_a_room_with(user)).unwrap_or_default()
        }));
        // Typing is told to a room's joined members; presence to everyone sharing a room.
        let weak = Arc::downgrade(&services);
        services.typing.set_audience(Box::new(move |room| {
            weak.upgrade().and_then(|s| s.rooms.get(room)).map(|r| r.joined()).unwrap_or_default()
        }));
        let weak = Arc::downgrade(&services);
        services.presence.set_rooms(Box::new(weak));
        // Whoever leaves a room (or is kicked, banned) stops typing there; a joiner and the
        // room's members see each other's presence.
        let weak = Arc::downgrade(&services);
        services.rooms.set_on_membership(Box::new(move |room, user, joined| {
            let Some(s) = weak.upgrade() else { return };
            if joined {
                s.presence.joined(room, user);
            } else {
                s.typing.left(room, user);
            }
        }));
        // Events stored before the search index existed are indexed in the background.
        let weak = Arc::downgrade(&services);
        tokio::spawn(async move {
            let Some(s) = weak.upgrade() else { return };
            if let Err(e) = s.rooms.build_search_index().await {
                tracing::error!(error = %e, "indexing stored events for search failed");
            }
        });
        // A profile change is searchable in the user directory at once.
        let directory = services.user_directory.clone();
        services.rooms.profile_fanout.set_on_change(Box::new(move |user, profile| match profile {
            Some(p) => directory.set(user, p.displayname.clone(), p.avatar_url.clone()),
            None => directory.remove(user),
        }));
        // Profile fan-outs that ran out of rate-limit tokens finish on tasks of their own,
        // which need the services (weakly held: they end with the server).
        let weak = Arc::downgrade(&services);
        services.rooms.profile_fanout.set_spawner(Box::new(move |user| {
            let weak = weak.clone();
            tokio::spawn(async move {
                if let Some(s) = weak.upgrade() {
                    s.rooms.finish_profile_update(&user).await;
                }
            });
        }));
        Ok(services)
    }

    /// What follows an account's deactivation, whether by its owner (`/account/deactivate`)
    /// or an admin: the user's key backup is deleted, the user leaves every room (declining
    /// invites), and with `erase` the profile is cleared.
    pub async fn after_deactivation(&self, user_id: &ruma::UserId, erase: bool) -> Result<()> {
        self.key_backup.delete_all(user_id).await?;
        self.rooms.leave_all(user_id).await;
        if erase {
            self.rooms.set_profile(user_id, Some(None), Some(None)).await?;
        }
        Ok(())
    }
}

/// Presence sees the rooms through the services (weakly held: they end with the server).
impl presence::RoomMates for std::sync::Weak<Services> {
    fn mates(&self, user: &ruma::UserId) -> Vec<ruma::OwnedUserId> {
        self.upgrade().map(|s| s.rooms.sharing_a_room_with(user)).unwrap_or_default()
    }

    fn share(&self, a: &ruma::UserId, b: &ruma::UserId) -> bool {
        self.upgrade().is_some_and(|s| s.rooms.share_a_room(a, b))
    }

    fn members(&self, room: &ruma::RoomId) -> Vec<ruma::OwnedUserId> {
        self.upgrade().and_then(|s| s.rooms.get(room)).map(|r| r.joined()).unwrap_or_default()
    }
}
