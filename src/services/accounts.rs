//! Accounts, sessions and devices: registration, login, access tokens, passwords,
//! deactivation, and the user-interactive authentication that guards them.

use std::sync::Arc;

use ruma::api::client::uiaa::{AuthData, UserIdentifier};
use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use crate::config::{Config, RegistrationMode};
use crate::error::{Error, Result};
use crate::services::device_lists::DeviceLists;
use crate::services::passwords::{MAX_PASSWORD_BYTES, Passwords};
use crate::services::ratelimit::RateLimiter;
use crate::services::tokens;
use crate::services::uia::{self, Completed, Purpose, Uia, UiaStageError};
use crate::storage::{
    AccessTokenRecord, DeviceLogout, DeviceRecord, NewSession, RegistrationTokenRecord,
    StorageError, Store, TokenHash, UserRecord, now_ms,
};

/// Longest device display name kept (in bytes).
const MAX_DISPLAY_NAME_BYTES: usize = 256;
/// Longest client-chosen device ID accepted (in bytes).
const MAX_DEVICE_ID_BYTES: usize = 255;

/// Who a request is from, as established by its access token.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: OwnedUserId,
    pub localpart: String,
    pub device_id: OwnedDeviceId,
    /// A guest account's token: only the spec's guest endpoints are allowed
    /// (`http::auth::guest_allowed`).
    pub guest: bool,
}

/// A fresh login: the token is shown to the client once and stored only as a hash.
#[derive(Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
}

pub struct RegisterRequest {
    pub username: Option<String>,
    pub password: Option<String>,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    pub inhibit_login: bool,
    pub guest: bool,
    /// A guest's access token: upgrade that guest account to a full one.
    pub guest_access_token: Option<String>,
    pub auth: Option<AuthData>,
    pub client_ip: String,
}

pub enum Registered {
    WithSession(Session),
    /// `inhibit_login` was set: the account exists, nobody is logged in.
    AccountOnly(OwnedUserId),
}

pub struct LoginRequest {
    /// `m.id.user`'s `user` (localpart or full user ID).
    pub user: String,
    pub password: String,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    pub client_ip: String,
}

/// The admin's way in (`axon user create`): no UIA, no registration policy.
pub struct AdminCreateUser {
    pub localpart: String,
    pub password: String,
    pub admin: bool,
}

pub struct Accounts {
    config: Arc<Config>,
    /// Deleting devices changes the user's device list.
    device_lists: Arc<DeviceLists>,
    store: Arc<dyn Store>,
    passwords: Passwords,
    uia: Uia,
    login_per_ip: RateLimiter,
    failed_login_per_account: RateLimiter,
    register_per_ip: RateLimiter,
    /// New accounts join the user directory; deactivated ones leave it.
    directory: Arc<super::user_directory::UserDirectory>,
}

const PASSWORD_FLOWS: &[&[&str]] = &[&[uia::PASSWORD]];

fn map_storage_user_exists(e: StorageError) -> Error {
    match e {
        StorageError::AlreadyExists => Error::UserInUse,
        StorageError::TokenNotUsable => Error::Forbidden("Registration token is not valid".into()),
        other => Error::Storage(other),
    }
}

impl Accounts {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        passwords: Passwords,
        device_lists: Arc<DeviceLists>,
        directory: Arc<super::user_directory::UserDirectory>,
    ) -> Self {
        let limits = &config.limits;
        Self {
            directory,
            device_lists,
            login_per_ip: RateLimiter::new(limits.login),
            failed_login_per_account: RateLimiter::new(limits.failed_login_per_account),
            register_per_ip: RateLimiter::new(limits.register),
            uia: Uia::default(),
            passwords,
            store,
            config,
        }
    }

    fn user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        UserId::parse(format!("@{localpart}:{}", self.config.server_name))
            .map_err(|e| Error::InvalidUsername(format!("Invalid user ID: {e}")))
    }

    /// Checks a desired localpart against the spec's grammar for new user IDs.
    pub fn validate_localpart(&self, localpart: &str) -> Result<()> {
        if localpart.is_empty() {
            return Err(Error::InvalidUsername("User ID cannot be empty".into()));
        }
        if let Some(bad) = localpart
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
        {
            return Err(Error::InvalidUsername(format!(
                "User ID may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'; found {bad:?}"
            )));
        }
        if localpart.starts_with('_') {
            return Err(Error::InvalidUsername("User ID may not begin with '_'".into()));
        }
        let full_len = 1 + localpart.len() + 1 + self.config.server_name.len();
        if full_len > 255 {
            return Err(Error::InvalidUsername("User ID may not be longer than 255 bytes".into()));
        }
        Ok(())
    }

    fn validate_password(&self, password: &str) -> Result<()> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::InvalidParam("Password too long".into()));
        }
        if password.chars().count() < self.config.registration.min_password_length {
            return Err(Error::WeakPassword(format!(
                "Password must be at least {} characters",
                self.config.registration.min_password_length
            )));
        }
        Ok(())
    }

    fn validate_device(&self, device_id: Option<&str>, display_name: Option<&str>) -> Result<()> {
        if let Some(id) = device_id
            && (id.is_empty() || id.len() > MAX_DEVICE_ID_BYTES || id.chars().any(char::is_control))
        {
            return Err(Error::InvalidParam("Invalid device_id".into()));
        }
        if display_name.is_some_and(|n| n.len() > MAX_DISPLAY_NAME_BYTES) {
            return Err(Error::InvalidParam("Device display name too long".into()));
        }
        Ok(())
    }

    /// Is this localpart free for registration? (`GET /register/available`)
    pub async fn available(&self, username: &str) -> Result<()> {
        self.validate_localpart(username)?;
        if self.store.user(username).await?.is_some() {
            return Err(Error::UserInUse);
        }
        Ok(())
    }

    fn registration_flows(&self) -> &'static [&'static [&'static str]] {
        match self.config.registration.mode {
            RegistrationMode::Token => &[&[uia::REGISTRATION_TOKEN]],
            _ => &[&[uia::DUMMY]],
        }
    }

    pub fn registration_mode(&self) -> RegistrationMode {
        self.config.registration.mode
    }

    /// `POST /register`.
    pub async fn register(&self, req: RegisterRequest) -> Result<Registered> {
        if req.guest {
            return self.register_guest(req).await;
        }
        if self.config.registration.mode == RegistrationMode::Closed {
            return Err(Error::Forbidden("Registration is disabled".into()));
        }
        self.register_per_ip.check(&req.client_ip)?;
        if let Some(guest_token) = req.guest_access_token.clone() {
            return self.upgrade_guest(req, &guest_token).await;
        }

        // A retry of a registration that succeeded (the client lost the response) gets the
        // same answer, not M_USER_IN_USE.
        if let Some(session_id) = req.auth.as_ref().and_then(AuthData::session)
            && let Some(done) = self.uia.registration(session_id)?
        {
            return self.replay_registration(session_id, done).await;
        }

        // Check what the client sent before UIA, so it learns of a taken name or a weak
        // password before completing any stage. An empty body is how clients ask for the
        // flows (Element does), so nothing here may be required yet.
        if let Some(name) = req.username.as_deref() {
            self.validate_localpart(name)?;
            if self.store.user(name).await?.is_some() {
                return Err(Error::UserInUse);
            }
        }
        if let Some(password) = req.password.as_deref() {
            self.validate_password(password)?;
        }
        self.validate_device(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;

        let flows = self.registration_flows();
        let owner = req.client_ip.clone();
        let completed =
            self.run_uia(req.auth.as_ref(), Purpose::Register, None, &owner, flows).await?;
        let session_id = completed.session_id.clone();
        match self.create_account(req, completed).await {
            Ok(registered) => {
                let login = match &registered {
                    Registered::WithSession(s) => {
                        Some((s.device_id.clone(), s.access_token.clone()))
                    }
                    Registered::AccountOnly(_) => None,
                };
                let user_id = match &registered {
                    Registered::WithSession(s) => s.user_id.clone(),
                    Registered::AccountOnly(user_id) => user_id.clone(),
                };
                self.uia.registered(&session_id, uia::Registration { user_id, login });
                Ok(registered)
            }
            Err(e) => {
                self.uia.registration_failed(&session_id);
                Err(e)
            }
        }
    }

    /// `POST /register?kind=guest`: a passwordless account with a random numeric localpart
    /// (as Synapse), logged in on one device. No UIA; limited per IP like registration.
    async fn register_guest(&self, req: RegisterRequest) -> Result<Registered> {
        if !self.config.guests.enabled {
            return Err(Error::GuestAccessForbidden("Guest access is disabled".into()));
        }
        self.register_per_ip.check(&req.client_ip)?;
        self.validate_device(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        // 16 digits: a collision is unlikely, and retried a few times if it happens.
        for _ in 0..4 {
            let localpart = tokens::random_string(b"0123456789", 16);
            let user_id = self.user_id(&localpart)?;
            let user = UserRecord {
                localpart: localpart.clone(),
                password_hash: None,
                created_ts: now_ms(),
                deactivated: false,
                admin: false,
                displayname: Some(localpart.clone()),
                avatar_url: None,
                guest: true,
            };
            let (session, mut new_session) = self.new_session(
                &user_id,
                &localpart,
                req.device_id.clone(),
                req.initial_device_display_name.clone(),
                &req.client_ip,
            )?;
            new_session.token.guest = true;
            match self.store.create_user(user, Some(new_session), None).await {
                Ok(()) => {
                    tracing::info!(%user_id, "registered guest");
                    return Ok(Registered::WithSession(session));
                }
                Err(StorageError::AlreadyExists) => continue,
                Err(e) => return Err(Error::Storage(e)),
            }
        }
        Err(Error::Internal("could not pick a free guest user ID".into()))
    }

    /// `POST /register` with `guest_access_token`: the guest account becomes a full one
    /// under the same user ID (rooms, devices and tokens stay; its tokens stop being
    /// guest tokens), with the password given, after the usual UIA. `username` must be the
    /// guest's localpart, as the spec requires. A new session is logged in unless
    /// `inhibit_login`.
    async fn upgrade_guest(&self, req: RegisterRequest, guest_token: &str) -> Result<Registered> {
        let owner = self
            .store
            .access_token(&TokenHash::of(guest_token))
            .await?
            .filter(|t| t.guest)
            .ok_or_else(|| Error::Forbidden("Invalid guest access token".into()))?;
        let localpart = owner.localpart;
        match req.username.as_deref() {
            None => {
                return Err(Error::MissingParam(
                    "username (the guest's localpart) is required to upgrade a guest".into(),
                ));
            }
            Some(name) if name != localpart => {
                return Err(Error::InvalidParam(
                    "username must be the guest account's localpart".into(),
                ));
            }
            Some(_) => {}
        }
        if let Some(password) = req.password.as_deref() {
            self.validate_password(password)?;
        }
        self.validate_device(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        let flows = self.registration_flows();
        let completed =
            self.run_uia(req.auth.as_ref(), Purpose::Register, None, &req.client_ip, flows).await?;
        let Some(password) = req.password.as_deref() else {
            self.uia.registration_failed(&completed.session_id);
            return Err(Error::MissingParam("A password is required to register".into()));
        };
        let password_hash = match self.passwords.hash(password).await {
            Ok(hash) => hash,
            Err(e) => {
                self.uia.registration_failed(&completed.session_id);
                return Err(e);
            }
        };
        let user_id = self.user_id(&localpart)?;
        let (session, new_session) = if req.inhibit_login {
            (None, None)
        } else {
            let (s, n) = self.new_session(
                &user_id,
                &localpart,
                req.device_id,
                req.initial_device_display_name,
                &req.client_ip,
            )?;
            (Some(s), Some(n))
        };
        let result = self
            .store
            .upgrade_guest(&localpart, password_hash, new_session, completed.registration_token)
            .await;
        self.uia.forget(&completed.session_id);
        match result {
            Ok(()) => {}
            Err(StorageError::NotFound) => {
                return Err(Error::Forbidden("Invalid guest access token".into()));
            }
            Err(e) => return Err(map_storage_user_exists(e)),
        }
        let displayname = self.store.user(&localpart).await?.and_then(|u| u.displayname);
        self.directory.set(&user_id, displayname, None);
        tracing::info!(%user_id, "upgraded guest");
        Ok(match session {
            Some(s) => Registered::WithSession(s),
            None => Registered::AccountOnly(user_id),
        })
    }

    /// The answer to a replayed registration: the same user, device and access token, as
    /// long as that token is still valid (after a logout, the session cannot log in again).
    async fn replay_registration(
        &self,
        session_id: &str,
        done: uia::Registration,
    ) -> Result<Registered> {
        let Some((device_id, access_token)) = done.login else {
            return Ok(Registered::AccountOnly(done.user_id));
        };
        let owner = self.store.access_token(&TokenHash::of(&access_token)).await?;
        if owner.is_none_or(|t| t.device_id != device_id.as_str()) {
            self.uia.forget(session_id);
            return Err(Error::Forbidden(
                "This registration's session has ended; log in instead".into(),
            ));
        }
        Ok(Registered::WithSession(Session { user_id: done.user_id, device_id, access_token }))
    }

    /// Creates the account once UIA is complete.
    async fn create_account(
        &self,
        req: RegisterRequest,
        completed: Completed,
    ) -> Result<Registered> {
        let password = req
            .password
            .as_deref()
            .ok_or_else(|| Error::MissingParam("A password is required to register".into()))?;
        let localpart = match req.username.as_deref() {
            Some(name) => name.to_owned(),
            None => tokens::random_string(b"abcdefghijklmnopqrstuvwxyz0123456789", 12),
        };
        let password_hash = self.passwords.hash(password).await?;
        let user = UserRecord {
            localpart: localpart.clone(),
            password_hash: Some(password_hash),
            created_ts: now_ms(),
            deactivated: false,
            admin: false,
            displayname: Some(localpart.clone()),
            avatar_url: None,
            guest: false,
        };
        let user_id = self.user_id(&localpart)?;
        let (session, new_session) = if req.inhibit_login {
            (None, None)
        } else {
            let (s, n) = self.new_session(
                &user_id,
                &localpart,
                req.device_id,
                req.initial_device_display_name,
                &req.client_ip,
            )?;
            (Some(s), Some(n))
        };
        self.store
            .create_user(user, new_session, completed.registration_token)
            .await
            .map_err(map_storage_user_exists)?;
        self.directory.set(&user_id, Some(localpart), None);
        tracing::info!(%user_id, "registered user");
        Ok(match session {
            Some(s) => Registered::WithSession(s),
            None => Registered::AccountOnly(user_id),
        })
    }

    /// `axon user create`: creates an account directly.
    pub async fn admin_create_user(&self, req: AdminCreateUser) -> Result<OwnedUserId> {
        self.validate_localpart(&req.localpart)?;
        if req.password.len() > MAX_PASSWORD_BYTES || req.password.is_empty() {
            return Err(Error::InvalidParam("Password must be 1 to 512 bytes".into()));
        }
        let user_id = self.user_id(&req.localpart)?;
        let user = UserRecord {
            displayname: Some(req.localpart.clone()),
            avatar_url: None,
            localpart: req.localpart,
            password_hash: Some(self.passwords.hash(&req.password).await?),
            created_ts: now_ms(),
            deactivated: false,
            admin: req.admin,
            guest: false,
        };
        let displayname = user.displayname.clone();
        self.store.create_user(user, None, None).await.map_err(map_storage_user_exists)?;
        self.directory.set(&user_id, displayname, None);
        tracing::info!(%user_id, "admin created user");
        Ok(user_id)
    }

    fn new_session(
        &self,
        user_id: &UserId,
        localpart: &str,
        device_id: Option<String>,
        display_name: Option<String>,
        client_ip: &str,
    ) -> Result<(Session, NewSession)> {
        let device_id = device_id.unwrap_or_else(tokens::device_id);
        let access_token = tokens::access_token();
        let now = now_ms();
        let new = NewSession {
            device: DeviceRecord {
                device_id: device_id.clone(),
                display_name,
                created_ts: now,
                last_seen_ts: Some(now),
                last_seen_ip: Some(client_ip.to_owned()),
            },
            token_hash: TokenHash::of(&access_token),
            token: AccessTokenRecord {
                localpart: localpart.to_owned(),
                device_id: device_id.clone(),
                created_ts: now,
                guest: false,
            },
        };
        let session =
            Session { user_id: user_id.to_owned(), device_id: device_id.into(), access_token };
        Ok((session, new))
    }

    /// Resolves a `m.id.user` identifier to one of this server's localparts (lower-cased:
    /// logins are case-insensitive, as users expect).
    fn localpart_of(&self, user: &str) -> Result<String> {
        let localpart = if user.starts_with('@') {
            let id = UserId::parse(user)
                .map_err(|_| Error::Forbidden("Invalid username or password".into()))?;
            if id.server_name() != self.config.server_name.as_str() {
                return Err(Error::Forbidden("Invalid username or password".into()));
            }
            id.localpart().to_owned()
        } else {
            user.to_owned()
        };
        Ok(localpart.to_lowercase())
    }

    /// `POST /login` with `m.login.password`.
    pub async fn login(&self, req: LoginRequest) -> Result<Session> {
        self.login_per_ip.check(&req.client_ip)?;
        self.validate_device(req.device_id.as_deref(), req.initial_device_display_name.as_deref())?;
        let localpart = self.localpart_of(&req.user)?;
        let user = self.verify_password(&localpart, &req.password).await?;
        let user_id = self.user_id(&user.localpart)?;
        let (session, new) = self.new_session(
            &user_id,
            &user.localpart,
            req.device_id,
            req.initial_device_display_name,
            &req.client_ip,
        )?;
        self.store.create_session(&user.localpart, new).await?;
        Ok(session)
    }

    /// Checks a password, counting failures per account; deactivated accounts are refused
    /// after a correct password, so that the refusal leaks nothing to a guesser.
    async fn verify_password(&self, localpart: &str, password: &str) -> Result<UserRecord> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::Forbidden("Invalid username or password".into()));
        }
        let user = self.store.user(localpart).await?;
        let hash = user.as_ref().and_then(|u| u.password_hash.as_deref());
        if self.passwords.verify(password, hash).await? {
            let user = user.ok_or_else(|| Error::Internal("verified a missing user".into()))?;
            return Ok(user);
        }
        if user.as_ref().is_some_and(|u| u.deactivated) {
            return Err(Error::UserDeactivated);
        }
        self.failed_login_per_account.check(localpart)?;
        Err(Error::Forbidden("Invalid username or password".into()))
    }

    /// Resolves an access token to its owner.
    pub async fn authenticate(&self, token: &str) -> Result<Identity> {
        let record = self
            .store
            .access_token(&TokenHash::of(token))
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })?;
        Ok(Identity {
            user_id: self.user_id(&record.localpart)?,
            localpart: record.localpart,
            device_id: record.device_id.into(),
            guest: record.guest,
        })
    }

    /// `POST /logout`: the token's device goes with it.
    pub async fn logout(&self, who: &Identity) -> Result<()> {
        self.delete_device_ids(who, vec![who.device_id.to_string()]).await
    }

    /// `POST /logout/all`.
    pub async fn logout_all(&self, who: &Identity) -> Result<()> {
        let ids = self.store.devices(&who.localpart).await?.into_iter().map(|d| d.device_id);
        self.delete_device_ids(who, ids.collect()).await
    }

    /// Deletes devices of the caller's; the device-list change is in the deletion's write.
    async fn delete_device_ids(&self, who: &Identity, device_ids: Vec<String>) -> Result<()> {
        self.device_lists
            .change(&who.user_id, |change| {
                self.store.delete_devices(&who.localpart, device_ids, change)
            })
            .await
    }

    /// Runs one step of user-interactive authentication.
    /// `user` is the authenticated user for endpoints that need a password re-check.
    /// `owner` is whom the session counts against: the user, or the client's IP address when
    /// there is no user yet (registration).
    async fn run_uia(
        &self,
        auth: Option<&AuthData>,
        purpose: Purpose,
        user: Option<&str>,
        owner: &str,
        flows: &[&[&str]],
    ) -> Result<Completed> {
        let Some(auth) = auth else {
            return Err(self.uia.challenge(purpose, user, owner, flows));
        };
        let resumed = self.uia.resume(auth.session(), purpose, user, owner)?;
        let stage = auth.auth_type().map(|t| t.to_string()).unwrap_or_default();
        if !flows.iter().any(|f| f.contains(&stage.as_str())) {
            return Err(self.uia.failed(
                &resumed,
                flows,
                UiaStageError {
                    errcode: "M_UNRECOGNIZED",
                    message: format!("Unsupported authentication stage {stage:?}"),
                },
            ));
        }
        let mut token_used = None;
        match auth {
            AuthData::Dummy(_) => {}
            AuthData::Password(p) => {
                let Some(expected) = user else {
                    return Err(Error::Internal("password stage without a user".into()));
                };
                let claimed = match &p.identifier {
                    UserIdentifier::Matrix(m) => self.localpart_of(&m.user)?,
                    _ => {
                        return Err(self.uia.failed(
                            &resumed,
                            flows,
                            UiaStageError {
                                errcode: "M_UNKNOWN",
                                message: "Only m.id.user identifiers are supported".into(),
                            },
                        ));
                    }
                };
                let verified = if claimed == expected {
                    self.verify_password(expected, &p.password).await
                } else {
                    Err(Error::Forbidden("Invalid username or password".into()))
                };
                match verified {
                    Ok(_) => {}
                    Err(Error::LimitExceeded { retry_after_ms }) => {
                        return Err(Error::LimitExceeded { retry_after_ms });
                    }
                    Err(_) => {
                        return Err(self.uia.failed(
                            &resumed,
                            flows,
                            UiaStageError {
                                errcode: "M_FORBIDDEN",
                                message: "Invalid password".into(),
                            },
                        ));
                    }
                }
            }
            AuthData::RegistrationToken(t) => {
                if !self.registration_token_valid(&t.token).await? {
                    return Err(self.uia.failed(
                        &resumed,
                        flows,
                        UiaStageError {
                            errcode: "M_FORBIDDEN",
                            message: "Invalid registration token".into(),
                        },
                    ));
                }
                token_used = Some(t.token.clone());
            }
            _ => {
                return Err(Error::Internal(format!("stage {stage} offered but not handled")));
            }
        }
        self.uia.complete_stage(&resumed, flows, &stage, token_used)
    }

    /// `GET /register/m.login.registration_token/validity`.
    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        Ok(self.store.registration_token(token).await?.is_some_and(|t| t.is_usable(now_ms())))
    }

    /// `POST /account/password`.
    pub async fn change_password(
        &self,
        who: &Identity,
        auth: Option<&AuthData>,
        new_password: &str,
        logout_devices: bool,
    ) -> Result<()> {
        self.validate_password(new_password)?;
        self.run_uia(
            auth,
            Purpose::ChangePassword,
            Some(&who.localpart),
            &who.localpart,
            PASSWORD_FLOWS,
        )
        .await?;
        let hash = self.passwords.hash(new_password).await?;
        if logout_devices {
            let keep = Some(who.device_id.to_string());
            self.device_lists
                .change(&who.user_id, |change| {
                    let logout = DeviceLogout::AllExcept(keep, change);
                    self.store.set_password(&who.localpart, hash, logout)
                })
                .await?;
        } else {
            self.store.set_password(&who.localpart, hash, DeviceLogout::Nobody).await?;
        }
        tracing::info!(user_id = %who.user_id, "password changed");
        Ok(())
    }

    /// `POST /account/deactivate`.
    pub async fn deactivate(&self, who: &Identity, auth: Option<&AuthData>) -> Result<()> {
        self.run_uia(
            auth,
            Purpose::Deactivate,
            Some(&who.localpart),
            &who.localpart,
            PASSWORD_FLOWS,
        )
        .await?;
        self.deactivate_account(&who.user_id).await?;
        tracing::info!(user_id = %who.user_id, "account deactivated");
        Ok(())
    }

    /// Marks the account deactivated and deletes its devices, the device-list change in the
    /// same write (by the user, an admin over HTTP, or the CLI).
    async fn deactivate_account(&self, user_id: &UserId) -> Result<()> {
        let localpart = user_id.localpart();
        self.device_lists
            .change(user_id, |change| self.store.deactivate_user(localpart, change))
            .await
            .map_err(|e| match e {
                Error::Storage(StorageError::NotFound) => Error::NotFound("User not found".into()),
                other => other,
            })?;
        self.directory.remove(user_id);
        Ok(())
    }

    pub async fn devices(&self, who: &Identity) -> Result<Vec<DeviceRecord>> {
        Ok(self.store.devices(&who.localpart).await?)
    }

    pub async fn device(&self, who: &Identity, device_id: &str) -> Result<DeviceRecord> {
        self.store
            .device(&who.localpart, device_id)
            .await?
            .ok_or_else(|| Error::NotFound("Device not found".into()))
    }

    /// `PUT /devices/{deviceId}`: only the display name is client-settable.
    pub async fn rename_device(
        &self,
        who: &Identity,
        device_id: &str,
        display_name: Option<String>,
    ) -> Result<()> {
        self.validate_device(None, display_name.as_deref())?;
        let mut device = self.device(who, device_id).await?;
        device.display_name = display_name;
        self.store.update_device(&who.localpart, device).await.map_err(|e| match e {
            StorageError::NotFound => Error::NotFound("Device not found".into()),
            other => other.into(),
        })
    }

    /// The password UIA that replacing cross-signing keys needs.
    pub async fn authorize_cross_signing(
        &self,
        who: &Identity,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        self.run_uia(
            auth,
            Purpose::CrossSigning,
            Some(&who.localpart),
            &who.localpart,
            PASSWORD_FLOWS,
        )
        .await?;
        Ok(())
    }

    /// `DELETE /devices/{deviceId}` and `POST /delete_devices`, behind a password UIA.
    pub async fn delete_devices(
        &self,
        who: &Identity,
        auth: Option<&AuthData>,
        device_ids: Vec<String>,
    ) -> Result<()> {
        self.run_uia(
            auth,
            Purpose::DeleteDevices,
            Some(&who.localpart),
            &who.localpart,
            PASSWORD_FLOWS,
        )
        .await?;
        self.delete_device_ids(who, device_ids).await
    }

    /// `axon token create` and the admin API: `token`, or `length` (default 16) random
    /// characters.
    pub async fn create_registration_token(
        &self,
        token: Option<String>,
        length: Option<usize>,
        uses_allowed: Option<u32>,
        expiry_ts: Option<u64>,
    ) -> Result<RegistrationTokenRecord> {
        let length = length.unwrap_or(16);
        if !(1..=64).contains(&length) {
            return Err(Error::InvalidParam("length must be between 1 and 64".into()));
        }
        if expiry_ts.is_some_and(|t| t < now_ms()) {
            return Err(Error::InvalidParam("expiry_time must not be in the past".into()));
        }
        let token = token.unwrap_or_else(|| {
            tokens::random_string(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                length,
            )
        });
        if token.is_empty()
            || token.len() > 64
            || !token.chars().all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c))
        {
            return Err(Error::InvalidParam(
                "Registration tokens are 1-64 characters of A-Z a-z 0-9 . _ ~ -".into(),
            ));
        }
        let record = RegistrationTokenRecord {
            token,
            uses_allowed,
            completed: 0,
            expiry_ts,
            created_ts: now_ms(),
        };
        self.store.create_registration_token(record.clone()).await.map_err(|e| match e {
            StorageError::AlreadyExists => Error::InvalidParam("Token already exists".into()),
            other => other.into(),
        })?;
        Ok(record)
    }

    pub async fn registration_tokens(&self) -> Result<Vec<RegistrationTokenRecord>> {
        Ok(self.store.registration_tokens().await?)
    }

    pub async fn registration_token(&self, token: &str) -> Result<RegistrationTokenRecord> {
        self.store
            .registration_token(token)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No such registration token: {token}")))
    }

    pub async fn delete_registration_token(&self, token: &str) -> Result<()> {
        self.store.delete_registration_token(token).await.map_err(|e| match e {
            StorageError::NotFound => Error::NotFound("No such token".into()),
            other => other.into(),
        })
    }

    /// Refuses anyone but a server admin: accounts made with `axon user create --admin` or
    /// promoted through the admin API.
    pub async fn require_admin(&self, who: &Identity) -> Result<()> {
        match self.store.user(&who.localpart).await? {
            Some(user) if user.admin && !user.deactivated => Ok(()),
            _ => Err(Error::Forbidden("You are not a server admin".into())),
        }
    }

    /// The account of one of this server's users, for the admin API.
    pub async fn local_user(&self, user_id: &UserId) -> Result<UserRecord> {
        if user_id.server_name() != self.config.server_name.as_str() {
            return Err(Error::Unknown("Can only look up local users".into()));
        }
        self.store
            .user(user_id.localpart())
            .await?
            .ok_or_else(|| Error::NotFound("User not found".into()))
    }

    /// Grants or revokes server admin rights. An admin cannot revoke their own, so that the
    /// last admin cannot lock everyone out by mistake.
    pub async fn set_admin(&self, by: &Identity, user_id: &UserId, admin: bool) -> Result<()> {
        let user = self.local_user(user_id).await?;
        if !admin && user_id == by.user_id {
            return Err(Error::Unknown("You may not demote yourself".into()));
        }
        self.store.set_admin(&user.localpart, admin).await?;
        tracing::info!(%user_id, admin, by = %by.user_id, "admin rights changed");
        Ok(())
    }

    /// Deactivates an account without its password (the admin API, `by` the admin's user
    /// ID, and `axon user deactivate`). The caller then removes it from its rooms
    /// ([`crate::services::Services::after_deactivation`]), as for `/account/deactivate`.
    pub async fn deactivate_by_admin(&self, by: &str, user_id: &UserId) -> Result<()> {
        self.local_user(user_id).await?;
        self.deactivate_account(user_id).await?;
        tracing::info!(%user_id, by, "account deactivated by an admin");
        Ok(())
    }
}
